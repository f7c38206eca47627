"""Tree verification: which drafted tokens the target accepts, losslessly.

Rule (greedy and sampling alike). For the root and every tree node u the target makes one
choice c_u from its own distribution p_u at that node (the argmax when greedy; an
independent sample of the temperature/top-k/top-p distribution when sampling). Starting
at the root, move to the child whose token equals c_u; stop when no child matches. The
tokens on the path are accepted and c_u of the last node is the bonus token.

Why this is lossless. Siblings carry distinct tokens (top-k of one draft distribution),
so at most one child matches. Whatever the tree, the token appended after prefix x is c_u
~ p(· | x): the tree only decides whether the *next* node's choice was already computed
in this pass. By induction over accepted positions, the generated sequence has exactly
the target's autoregressive distribution. This is the same as EAGLE's sequential rule for
deterministic top-k children with draft probability q = 1 ("accept child c_i with
probability p(c_i) / (1 - Σ_{j<i} p(c_j)), else zero it, renormalise the residual and try
the next sibling; if all fail, sample the residual"): that walk returns token t with
probability p(t), i.e. it *is* sampling c_u ~ p_u and checking it against the children,
only with different random numbers. ``tests/test_sampling_lossless.py`` checks the joint
distribution of the first generated tokens against exact target probabilities, and shows
that a broken rule fails the same test.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from beagle.decoding.sampling import GenerationSettings, SamplingTensors, choose_on_device, choose_tokens
from beagle.decoding.tree import DraftTree


@dataclass
class Verdict:
    """path: accepted tree nodes (0-based node indices, root excluded), root to leaf;
    bonus: the target's choice after the last accepted node."""

    path: list[int]
    bonus: int


@dataclass
class Acceptance:
    """The accepted path at fixed shapes (no host reads; the fast path captures it).

    keep: [D+1] long, rows of [root, tree nodes] to keep: the root (0), then the accepted nodes (1-based)
    root to leaf, padded with further rows; count: [1] long, how many rows of ``keep`` are real (1 + the
    accepted length); bonus: [1] long, the target's choice after the last accepted node.
    """

    keep: torch.Tensor
    count: torch.Tensor
    bonus: torch.Tensor


def accept_on_device(tree: DraftTree, choices: torch.Tensor, ancestry: torch.Tensor | None = None) -> Acceptance:
    """choices: [N+1] the target's choice at the root (index 0) and at each node (1..N);
    ancestry: ``tree.ancestry()`` if already computed. D = ``tree.max_depth``."""
    device = choices.device
    parent_rows = tree.parents.to(device) + 1  # root -> row 0
    matches = tree.tokens.to(device) == choices[parent_rows]  # [N]: node's token = its parent's choice
    matched_rows = torch.cat([torch.ones(1, dtype=torch.bool, device=device), matches])  # [N+1], root matched
    ancestry = tree.ancestry() if ancestry is None else ancestry
    # A node is accepted when it and every ancestor matched: no row of its ancestry is unmatched.
    accepted = ~(ancestry & ~matched_rows[None]).any(dim=-1)  # [N+1]
    depth_of_row = torch.cat([torch.zeros(1, dtype=torch.long, device=device), tree.depths.to(device)])
    deepest = torch.where(accepted, depth_of_row, -1).argmax()  # one accepted node per depth
    deepest = deepest.reshape(1)  # index with a 1-D tensor: a 0-D one is read on the host
    on_path = ancestry.index_select(0, deepest)[0]  # [N+1]: the root, the accepted nodes
    # Rows on the path first (ascending = root to leaf, parents precede children), then the others.
    order = torch.argsort((~on_path).to(torch.int8), stable=True)
    keep = order[: tree.max_depth + 1]
    return Acceptance(keep=keep, count=on_path.sum().reshape(1), bonus=choices.index_select(0, deepest))


def accept_path(tree: DraftTree, choices: torch.Tensor) -> Verdict:
    """choices: [N+1] the target's choice at the root (index 0) and at each node (1..N)."""
    acceptance = accept_on_device(tree, choices)
    count = int(acceptance.count)
    path = [int(row) - 1 for row in acceptance.keep[1:count].tolist()]
    return Verdict(path=path, bonus=int(acceptance.bonus))


class TreeVerifier:
    """The lossless verification rule: one target choice per node, then :func:`accept_path`."""

    def __call__(
        self, tree: DraftTree, logits: torch.Tensor, settings: GenerationSettings, generator: torch.Generator | None
    ) -> Verdict:
        """logits: [N+1, V] target logits at the root (row 0) and the tree nodes."""
        return accept_path(tree, choose_tokens(logits, settings, generator))


class FastVerifier:
    """The same rule at fixed shapes, for the fast path: one target choice per node
    (:func:`~beagle.decoding.sampling.choose_on_device`), then :func:`accept_on_device`. Tests subclass it to
    show a broken rule is caught."""

    def choose(self, logits, settings: GenerationSettings, uniforms, sampling: SamplingTensors | None = None):
        return choose_on_device(logits, settings, uniforms, sampling)

    def accept(self, tree: DraftTree, choices: torch.Tensor, ancestry: torch.Tensor, logits, settings) -> Acceptance:
        return accept_on_device(tree, choices, ancestry)
