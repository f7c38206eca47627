"""One generation's target passes: prefill, one-token steps, tree verification, keeping the accepted path.

Two implementations behind one interface (``prefill`` / ``step`` / ``verify`` / ``keep``, and ``length``,
the tokens in the target cache):

- :class:`DynamicSession` (default): a transformers ``DynamicCache`` that grows by the pass's tokens;
  every pass has its own shapes, run eagerly.
- :class:`StaticSession` (``static=True``): a :class:`~beagle.target.static_cache.StaticKVCache` of fixed
  capacity. Every one-token step and every verification pass has the same shapes (verification is padded
  to the tree's full size), so on CUDA they are captured once as CUDA graphs and replayed: one launch per
  pass instead of a few hundred kernel launches from Python. Attention runs over the whole capacity, the
  4-D mask hiding the slots that are not part of the sequence. On a CPU the same static path runs eagerly.

Both feed the engine the same hidden states up to floating-point summation order, so greedy decoding stays
the target's greedy decoding (tests compare both paths in fp32).
"""

from __future__ import annotations

import logging

import torch

from beagle.target.cache import keep_cache_entries, tree_attention_mask
from beagle.target.static_cache import StaticKVCache

logger = logging.getLogger(__name__)

CAPACITY_STEP = 1024  # static capacities are rounded up to a multiple of this (reuse across requests)


class DynamicSession:
    """Eager passes over a growing ``DynamicCache``."""

    def __init__(self, target):
        self.target = target
        self.cache = target.new_cache()
        self.length = 0

    def prefill(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids: [1, P] -> hidden [1, P, d]."""
        hidden = self.target.forward(input_ids, self.cache)
        self.length = input_ids.shape[1]
        return hidden

    def step(self, token: int) -> torch.Tensor:
        """One token at position ``length`` -> hidden [1, 1, d]."""
        hidden = self.target.forward(torch.tensor([[token]], device=self.target.device), self.cache)
        self.length += 1
        return hidden

    def verify(self, tokens: torch.Tensor, positions: torch.Tensor, ancestry: torch.Tensor) -> torch.Tensor:
        """tokens / positions: [T] (root + tree nodes), ancestry: [T, T] bool, all on the target's device
        -> hidden [1, T, d]. The entries are pending until :meth:`keep`."""
        mask = tree_attention_mask(self.length, ancestry, self.target.dtype)
        return self.target.forward(tokens[None], self.cache, positions[None], mask)

    def keep(self, keep: torch.Tensor) -> None:
        """Keep the verified entries ``keep`` ([A] indices into the last verify's tokens, ascending)."""
        keep_cache_entries(self.cache, self.length, keep)
        self.length += int(keep.shape[0])


class StaticRuntime:
    """The fixed-capacity cache and the captured graphs of one target, reused across generations."""

    def __init__(self, target, capacity: int, graphs: bool):
        self.target = target
        self.capacity = capacity
        self.graphs = graphs
        self.cache = StaticKVCache(target.num_layers, capacity, target.device)
        self.captured: dict[int, _GraphedPass] = {}

    @classmethod
    def for_target(cls, target, needed: int, scratch: int, graphs: bool) -> "StaticRuntime":
        """The target's runtime if it is big enough, else a new one (the old one's memory is released)."""
        runtime = getattr(target, "_beagle_static_runtime", None)
        if runtime is None or runtime.capacity < needed + scratch or runtime.graphs != graphs:
            capacity = -(-(needed + scratch) // CAPACITY_STEP) * CAPACITY_STEP
            target._beagle_static_runtime = None  # free the old buffers and graphs first
            runtime = cls(target, capacity, graphs)
            target._beagle_static_runtime = runtime
            logger.info("static target cache: %d slots%s", capacity, ", CUDA graphs" if graphs else "")
        return runtime

    def run(self, tokens: torch.Tensor, positions: torch.Tensor, writes: torch.Tensor, fill_mask) -> torch.Tensor:
        """One pass of T = len(tokens) tokens at slots ``writes``; ``fill_mask(mask)`` writes the [1, 1, T, C]
        additive mask. Returns hidden [1, T, d] (a graph's output buffer: read it before the next pass)."""
        count = tokens.shape[0]
        if self.graphs:
            graphed = self.captured.get(count)
            if graphed is None:
                graphed = self.captured[count] = _GraphedPass(self, count)
            return graphed.replay(tokens, positions, writes, fill_mask)
        mask = torch.empty(1, 1, count, self.capacity, dtype=self.target.dtype, device=self.target.device)
        fill_mask(mask)
        self.cache.write_positions = writes
        return self.target.forward(tokens[None], self.cache, positions[None], mask)


class _GraphedPass:
    """A target pass of a fixed token count captured as a CUDA graph over static input buffers."""

    def __init__(self, runtime: StaticRuntime, count: int):
        target, device = runtime.target, runtime.target.device
        capacity = runtime.capacity
        self.runtime = runtime
        self.tokens = torch.zeros(1, count, dtype=torch.long, device=device)
        self.positions = torch.zeros(1, count, dtype=torch.long, device=device)
        self.writes = torch.arange(capacity - count, capacity, device=device)  # warm-up: the scratch slots
        self.mask = torch.full((1, 1, count, capacity), torch.finfo(target.dtype).min, dtype=target.dtype,
                               device=device)
        self.mask[..., capacity - count :] = 0
        cache = runtime.cache
        cache.write_positions = self.writes
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream):
            for _ in range(2):  # warm-up outside the graph (lazy allocations, kernel selection)
                self._forward()
        torch.cuda.current_stream(device).wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.hidden = self._forward()
        logger.info("captured a CUDA graph for %d-token target passes", count)

    def _forward(self) -> torch.Tensor:
        return self.runtime.target.forward(self.tokens, self.runtime.cache, self.positions, self.mask)

    def replay(self, tokens, positions, writes, fill_mask) -> torch.Tensor:
        self.tokens[0].copy_(tokens)
        self.positions[0].copy_(positions)
        self.writes.copy_(writes)
        fill_mask(self.mask)
        self.graph.replay()
        return self.hidden


class StaticSession:
    """Fixed-shape passes over the target's :class:`StaticRuntime` (CUDA graphs when ``graphs``).

    ``verify_tokens``: the token count every verification pass is padded to (root + tree size).
    """

    def __init__(self, target, needed: int, verify_tokens: int, graphs: bool):
        self.target = target
        self.verify_tokens = verify_tokens
        self.runtime = StaticRuntime.for_target(target, needed, scratch=verify_tokens + 1, graphs=graphs)
        self.cache = self.runtime.cache
        self.cache.length = 0
        self.length = 0
        self.device = target.device

    def prefill(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Eager (its length varies): causal mask over the static slots."""
        count = input_ids.shape[1]
        capacity = self.runtime.capacity
        mask = torch.full((count, capacity), torch.finfo(self.target.dtype).min, dtype=self.target.dtype,
                          device=self.device)
        mask[:, :count] = torch.triu(mask[:, :count], diagonal=1)
        self.cache.write_positions = torch.arange(count, device=self.device)
        hidden = self.target.forward(input_ids, self.cache, torch.arange(count, device=self.device)[None],
                                     mask[None, None])
        self.length = self.cache.length = count
        return hidden

    def step(self, token: int) -> torch.Tensor:
        start = self.length

        def fill(mask):
            mask.fill_(torch.finfo(mask.dtype).min)
            mask[..., : start + 1] = 0

        position = torch.tensor([start], device=self.device)
        hidden = self.runtime.run(torch.tensor([token], device=self.device), position, position, fill)
        self.length = self.cache.length = start + 1
        return hidden

    def verify(self, tokens: torch.Tensor, positions: torch.Tensor, ancestry: torch.Tensor) -> torch.Tensor:
        start, count = self.length, tokens.shape[0]
        total = max(self.verify_tokens, count)
        if total > count:  # pad: extra tokens at the last real position, seeing the prefix only
            tokens = torch.cat([tokens, tokens[-1:].expand(total - count)])
            positions = torch.cat([positions, positions[-1:].expand(total - count)])
        writes = torch.arange(start, start + total, device=self.device)

        def fill(mask):
            mask.fill_(torch.finfo(mask.dtype).min)
            mask[..., :start] = 0
            mask[0, 0, :count, start : start + count].masked_fill_(ancestry, 0)

        return self.runtime.run(tokens, positions, writes, fill)[:, :count]

    def keep(self, keep: torch.Tensor) -> None:
        self.cache.keep(self.length, keep)
        self.length = self.cache.length
