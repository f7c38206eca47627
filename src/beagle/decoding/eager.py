"""The eager path: one generation's round state over growing caches, with Python control flow.

The same three steps as the fast path's :class:`~beagle.decoding.fast.FastState`, so the engine runs one loop
over either::

    prefill(prompt, settings, generator) -> first token     one target pass over the prompt; the draft
                                                            commits its states and drafts the first root
    round(settings, generator) -> RoundOutput               build_tree -> one target pass over [root, tree]
                                                            -> accepted path + bonus -> the draft commits
    tail_step(settings, generator) -> token                 one plain target step (AR decoding, the last
                                                            tokens before the context limit, a fallback)

The target's cache is a transformers ``DynamicCache`` (:class:`~beagle.target_model.session.DynamicSession`), the
draft's a growing :class:`~beagle.models.draft_cache.DraftCache`. Without a draft, ``round`` is one plain step.
Host reads happen where the control flow needs them (the tree's depth, the verdict). ``timings`` holds the
seconds spent drafting and verifying since the last prefill (synchronised on a GPU).
"""

from __future__ import annotations

import time

import torch

from beagle.decoding.fast import RoundOutput
from beagle.decoding.sampling import GenerationSettings, choose_tokens
from beagle.decoding.tree import TreeSettings, build_tree
from beagle.decoding.verify import TreeVerifier
from beagle.target_model.session import DynamicSession

DRAFT_CACHE_SLACK = 8  # draft cache slots beyond prompt + new tokens + two trees (it grows if ever short)


class EagerState:
    """One generation at a time over ``target`` (and ``draft`` with ``tree``, if given)."""

    def __init__(self, target, draft=None, tree: TreeSettings | None = None, concat: bool = True,
                 verifier: TreeVerifier | None = None):
        self.target = target
        self.draft = draft
        self.tree = tree
        self.concat = concat
        self.verifier = verifier or TreeVerifier()
        self.device = target.device
        self.session: DynamicSession | None = None
        self.timings = {"draft": 0.0, "verify": 0.0}

    @property
    def target_cache(self):
        """The target's KV cache of the current generation (tests compare it with an AR cache)."""
        return None if self.session is None else self.session.cache

    def prefill(self, prompt: torch.Tensor, settings: GenerationSettings, generator) -> int:
        """prompt: [L] long -> the first new token (the root of the first round)."""
        self.timings = {"draft": 0.0, "verify": 0.0}
        self.session = DynamicSession(self.target)
        prompt = prompt.to(self.device)
        hidden = self.session.prefill(prompt[None])
        self.token = int(choose_tokens(self.target.logits(hidden[:, -1]), settings, generator)[0])
        self.position = prompt.shape[0]  # of ``token``, the next input to the target
        if self.draft is not None:
            clock = time.perf_counter()
            self.draft_cache = self.draft.new_cache(
                capacity=prompt.shape[0] + settings.max_new_tokens + 2 * self.tree.depth + DRAFT_CACHE_SLACK)
            self.draft_cache.concat = self.concat
            with torch.no_grad():
                self.root_hidden = self.draft.start_round(self.draft_cache, prompt, hidden[0], 0, self.token)
            self._lap("draft", clock)
        return self.token

    def tail_step(self, settings: GenerationSettings, generator) -> int:
        """One plain target step from the root token; the draft is left behind (the generation either ends
        within the context limit or continues without speculation)."""
        hidden = self.session.step(self.token)
        self.token = int(choose_tokens(self.target.logits(hidden[:, -1]), settings, generator)[0])
        self.position += 1
        return self.token

    def round(self, settings: GenerationSettings, generator) -> RoundOutput:
        """One speculative round (one plain step without a draft): the accepted tokens, then the bonus."""
        if self.draft is None:
            return RoundOutput([self.tail_step(settings, generator)], 0)
        draft, device = self.draft, self.device
        clock = time.perf_counter()
        with torch.no_grad():
            tree = build_tree(draft, self.draft_cache, self.root_hidden, self.tree)
        self.draft_cache.reset_tree()
        clock = self._lap("draft", clock)

        inputs = torch.cat([torch.tensor([self.token], device=device), tree.tokens.to(device)])
        positions = self.position + torch.cat([torch.zeros(1, dtype=torch.long, device=device),
                                               tree.depths.to(device)])
        hidden = self.session.verify(inputs, positions, tree.ancestry().to(device))
        verdict = self.verifier(tree, self.target.logits(hidden[0]), settings, generator)
        keep = torch.tensor([0] + [node + 1 for node in verdict.path], device=device)
        accepted_states = hidden[0, keep]
        self.session.keep(keep)
        accepted = inputs[keep]
        clock = self._lap("verify", clock)

        with torch.no_grad():
            self.root_hidden = draft.start_round(self.draft_cache, accepted, accepted_states, self.position,
                                                 verdict.bonus)
        self.position += int(keep.shape[0])
        self.token = verdict.bonus
        self._lap("draft", clock)
        return RoundOutput(accepted[1:].tolist() + [verdict.bonus], tree.depth)

    def _lap(self, name: str, clock: float) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        self.timings[name] += now - clock
        return now
