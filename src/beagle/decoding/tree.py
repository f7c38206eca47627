"""EAGLE-2 dynamic draft tree, built with tensor operations on the draft's device.

Expansion: the root's top-k children form level 1; each level's k nodes are expanded to
their top-k children and the k best of those k² candidates, by cumulative draft
log-probability, form the next level. Every candidate ever scored joins a pool; the
``total_tokens`` best of the pool (global rerank) make the tree. A child's cumulative score
never exceeds its parent's, and ties are broken towards shallower nodes, so the chosen set
is closed under ancestry.

Two properties the lossless verification rule relies on hold by construction, whatever the draft emits:

- *closed under ancestry*: draft log-probabilities are clamped to ``[MIN_LOG_PROB, 0]`` with NaN read as
  ``MIN_LOG_PROB`` (:func:`clamp_log_probs`), so a cumulative score is finite and never rises along a path.
  (A NaN sorts above every number in ``topk``: a NaN child of an unchosen parent would join the tree attached
  to the root at the wrong depth, and the target would verify it at the wrong position.)
- *distinct siblings*: the children of one node are ``topk`` indices of one distribution (distinct), mapped to
  target ids by the draft vocabulary's ascending, duplicate-free id list (injective).

:func:`check_tree` checks both (host reads: tests and debugging, not the hot loop).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from beagle.errors import BeagleError


# The floor of a draft log-probability in the tree: far below what a working draft gives, and a whole number
# that float32 sums exactly over a thousand levels, so a path of floors still ranks strictly by depth.
MIN_LOG_PROB = -1e4


@dataclass
class TreeSettings:
    """depth: draft levels; top_k: children per expanded node and nodes per level; total_tokens: tree size."""

    depth: int = 5
    top_k: int = 10
    total_tokens: int = 60

    def max_nodes(self) -> int:
        return self.top_k + (self.depth - 1) * self.top_k**2

    def validate(self, vocab_size: int | None = None) -> "TreeSettings":
        for name in ("depth", "top_k", "total_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise BeagleError(f"tree {name} must be a positive integer, got {value!r}")
        if self.total_tokens > self.max_nodes():
            raise BeagleError(
                f"total_tokens={self.total_tokens} is more than a depth-{self.depth}, top-k-{self.top_k} tree "
                f"can hold ({self.max_nodes()}); lower --total-tokens or raise --depth/--tree-top-k"
            )
        if vocab_size is not None and self.top_k > vocab_size:
            raise BeagleError(f"tree top_k={self.top_k} exceeds the vocabulary size {vocab_size}")
        return self


# The default tree on a CPU, from a measured sweep (bench/cpu/cpu_paths.py, docs/results/cpu-tree-sweep-onednn.md).
# With oneDNN linears, grouped-query attention without KV copies and an in-place KV cache (beagle.target_model), a
# target pass over 9 tokens costs little more than a plain step on a CPU, so a wide, shallow tree pays: depth 2,
# top-k 6, 8 draft tokens was the fastest of the sweep (its figures are in that file, not here).
CPU_TREE = {"depth": 2, "top_k": 6, "total_tokens": 8}


def default_tree(device) -> TreeSettings:
    """The tree to use when none is given: :data:`CPU_TREE` on a CPU, depth 5 / top-k 10 / 60 tokens elsewhere."""
    return TreeSettings(**CPU_TREE) if torch.device(device).type == "cpu" else TreeSettings()


@dataclass
class DraftTree:
    """A draft tree of N nodes in topological order (parents before children).

    tokens: [N]; parents: [N] index of the parent node, -1 for children of the root;
    depths: [N] (1 = child of the root); scores: [N] cumulative draft log-probabilities.
    """

    tokens: torch.Tensor
    parents: torch.Tensor
    depths: torch.Tensor
    scores: torch.Tensor
    max_depth: int  # the depth it was drafted to (a bound on depths; known without reading them)

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def depth(self) -> int:
        return int(self.depths.max()) if len(self) else 0

    def ancestry(self) -> torch.Tensor:
        """[N+1, N+1] bool, row i = nodes visible to node i (itself and its ancestors); node 0 is the root.

        Fixed shapes, no host reads: each of ``max_depth`` rounds extends every row by its parent's row
        (after r rounds a row holds r generations of ancestors).
        """
        count = len(self) + 1
        device = self.tokens.device
        own = torch.eye(count, dtype=torch.bool, device=device)
        parent_rows = torch.cat([torch.zeros(1, dtype=torch.long, device=device), self.parents + 1])  # root -> 0
        visible = own
        for _ in range(self.max_depth):
            visible = own | visible[parent_rows]
        return visible


def clamp_log_probs(log_probs: torch.Tensor) -> torch.Tensor:
    """Draft log-probabilities made safe to rank: NaN and -inf -> MIN_LOG_PROB, +inf -> 0, the rest clamped to
    [MIN_LOG_PROB, 0]. Same shape; no host reads."""
    return torch.nan_to_num(log_probs, nan=MIN_LOG_PROB, posinf=0.0, neginf=MIN_LOG_PROB).clamp(MIN_LOG_PROB, 0.0)


def check_tree(tree: DraftTree) -> None:
    """Raise AssertionError unless ``tree`` is well formed: parents precede children, depth = parent's depth + 1
    (1 under the root), depths within ``max_depth``, scores finite and non-increasing along every path, and
    siblings (children of one node) carry distinct tokens. Reads the tree on the host."""
    parents, depths = tree.parents.tolist(), tree.depths.tolist()
    tokens, scores = tree.tokens.tolist(), tree.scores.tolist()
    seen: set[tuple[int, int]] = set()
    for node, (parent, depth, token, score) in enumerate(zip(parents, depths, tokens, scores)):
        assert -1 <= parent < node, f"node {node}: parent {parent} does not precede it"
        assert depth == (1 if parent < 0 else depths[parent] + 1), f"node {node}: depth {depth}, parent {parent}"
        assert 1 <= depth <= tree.max_depth, f"node {node}: depth {depth} outside 1..{tree.max_depth}"
        assert math.isfinite(score), f"node {node}: score {score}"
        assert parent < 0 or score <= scores[parent], f"node {node}: score above its parent's"
        assert (parent, token) not in seen, f"node {node}: token {token} repeats a sibling's"
        seen.add((parent, token))


def build_tree(draft, cache, root_hidden: torch.Tensor, settings: TreeSettings, max_depth: int | None = None) -> DraftTree:
    """Draft a dynamic tree from the root's draft state.

    draft: a :class:`~beagle.models.base.DraftModel` with a round started on ``cache``;
    root_hidden: [1, d]; max_depth caps the depth (remaining budget / context).
    """
    depth = min(settings.depth, max_depth) if max_depth is not None else settings.depth
    depth = max(depth, 1)
    top_k = settings.top_k
    log_probs = clamp_log_probs(torch.log_softmax(draft.draft_logits(root_hidden), dim=-1)[0])  # [N] (draft vocab)
    level_scores, level_tokens = torch.topk(log_probs, top_k)  # [k]
    level_tokens = draft.to_target_ids(level_tokens)
    device = level_tokens.device
    pool_tokens = [level_tokens]
    pool_scores = [level_scores]
    pool_parents = [torch.full((top_k,), -1, dtype=torch.long, device=device)]
    pool_depths = [torch.ones(top_k, dtype=torch.long, device=device)]
    level_pool_index = torch.arange(top_k, device=device)
    level_parents = torch.zeros(top_k, dtype=torch.long, device=device)  # all children of the root
    pool_size = top_k
    for level in range(2, depth + 1):
        hidden = draft.expand(cache, level_tokens, level_parents)  # states of the previous level's nodes
        child_log_probs = clamp_log_probs(torch.log_softmax(draft.draft_logits(hidden), dim=-1))  # [k, N]
        child_scores, child_tokens = torch.topk(child_log_probs, top_k, dim=-1)  # [k, k]
        child_tokens = draft.to_target_ids(child_tokens)
        cumulative = (level_scores[:, None] + child_scores).flatten()  # [k*k]
        pool_tokens.append(child_tokens.flatten())
        pool_scores.append(cumulative)
        pool_parents.append(level_pool_index[:, None].expand(top_k, top_k).flatten())  # each parent k times
        pool_depths.append(torch.full((top_k * top_k,), level, dtype=torch.long, device=device))
        level_scores, best = torch.topk(cumulative, top_k)
        level_tokens = child_tokens.flatten()[best]
        level_parents = best // top_k
        level_pool_index = pool_size + best
        pool_size += top_k * top_k
    tokens = torch.cat(pool_tokens)
    scores = torch.cat(pool_scores)
    parents = torch.cat(pool_parents)
    depths = torch.cat(pool_depths)
    # Global rerank; the tiny depth penalty breaks score ties towards ancestors.
    keys = scores.double() - 1e-9 * depths.double()
    total = min(settings.total_tokens, tokens.shape[0])
    chosen = torch.topk(keys, total).indices.sort().values  # pool order is topological
    position = torch.full((tokens.shape[0],), -1, dtype=torch.long, device=device)
    position[chosen] = torch.arange(total, device=device)
    chosen_parents = parents[chosen]
    tree_parents = torch.where(chosen_parents >= 0, position[chosen_parents.clamp(min=0)], chosen_parents)
    return DraftTree(tokens[chosen], tree_parents, depths[chosen], scores[chosen], depth)
