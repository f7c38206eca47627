"""The target's fixed-shape passes for the fast path: a preallocated KV cache, compiled passes.

Every pass of T tokens has the same shapes whatever the sequence length: it writes its T entries at slots
given in a tensor and attends over the whole cache through a 4-D mask built on the device from a length
tensor, so nothing in it depends on a host value. Such a pass can be compiled once per token count
(``torch.compile``, inductor) and captured in a CUDA graph by the caller (:mod:`beagle.decoding.fast`).

One :class:`FastTargetPasses` per target at a time (reused across generations and generators): its cache
and its compiled pass, compiled on first use of each token count. A larger capacity replaces it (capacities
double, so a long-running process recompiles a few times at most); callers that know their largest request
reserve it up front (:meth:`beagle.decoding.engine.SpeculativeGenerator.reserve`).
"""

from __future__ import annotations

import inspect
import logging
import time

import torch

from beagle.kernels.fast_attention import attention_implementation
from beagle.target_model.fast_cache import FastKVCache

logger = logging.getLogger(__name__)

CAPACITY_STEP = 512  # capacities are rounded up to a multiple of this, so most requests reuse one


def capacity_for(needed: int) -> int:
    return -(-needed // CAPACITY_STEP) * CAPACITY_STEP


class FastTargetPasses:
    """Fixed-capacity passes of ``target`` (a :class:`~beagle.target_model.model.TargetModel`).

    capacity: cache slots; compile: ``torch.compile`` the pass (one compilation per token count);
    compile_backend: the ``torch.compile`` backend (``"inductor"``; tests use ``"eager"`` to trace only).
    The T-token passes attend with ``target.fast_attention`` (:mod:`beagle.kernels.fast_attention`); the
    prefill with the model's own attention.
    """

    def __init__(self, target, capacity: int, compile: bool = False, compile_backend: str = "inductor"):
        self.target = target
        self.capacity = int(capacity)
        self.device = target.device
        self.attention = getattr(target, "fast_attention", "sdpa")
        self.cache = FastKVCache(target.num_layers, self.capacity, self.device)
        self.slots = torch.arange(self.capacity, device=self.device)
        self.min_value = torch.finfo(target.dtype).min
        self._cache_position = "cache_position" in inspect.signature(target.decoder.forward).parameters
        self.compile_seconds = 0.0
        self._compiled = None
        self._compiled_counts: set[int] = set()
        if compile:
            self._compiled = torch.compile(self._pass, dynamic=False, backend=compile_backend)
        self._initialize_cache()

    @classmethod
    def for_target(cls, target, needed: int, compile: bool, compile_backend: str = "inductor") -> "FastTargetPasses":
        """The target's instance if it holds ``needed`` slots with the same compile setting, else a new one
        (at least twice the old capacity)."""
        current = getattr(target, "_beagle_fixed_passes", None)
        attention = getattr(target, "fast_attention", "sdpa")
        if (current is not None and current.capacity >= needed and (current._compiled is not None) == compile
                and current.attention == attention):
            return current
        if current is not None and (current._compiled is not None) == compile:
            needed = max(needed, 2 * current.capacity)
        target._beagle_fixed_passes = None  # release the old buffers first
        current = cls(target, capacity_for(needed), compile=compile, compile_backend=compile_backend)
        target._beagle_fixed_passes = current
        logger.info("fixed-shape target cache: %d slots%s", current.capacity, ", compiled" if compile else "")
        return current

    # ------------------------------------------------------------------ passes
    def run(self, tokens: torch.Tensor, positions: torch.Tensor, writes: torch.Tensor, visible: torch.Tensor):
        """tokens / positions / writes: [T] long (writes: the cache slots of the T new entries);
        visible: [T, capacity] bool. Returns (hidden [T, d], logits [T, V] float32)."""
        mask = torch.where(visible, 0.0, self.min_value).to(self.target.dtype)[None, None]
        with attention_implementation(self.target.decoder, self.attention):
            return self._run(tokens, positions, writes, mask)

    def _run(self, tokens, positions, writes, mask):
        count = int(tokens.shape[0])
        if self._compiled is None:
            return self._pass(tokens, positions, writes, mask)
        if count not in self._compiled_counts:  # first call of this shape: compiles (timed once)
            started = time.perf_counter()
            out = self._compiled(tokens, positions, writes, mask)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            seconds = time.perf_counter() - started
            self.compile_seconds += seconds
            self._compiled_counts.add(count)
            logger.info("compiled the %d-token target pass in %.1f s", count, seconds)
            return out
        return self._compiled(tokens, positions, writes, mask)

    def _pass(self, tokens, positions, writes, mask):
        hidden = self._decoder(tokens, positions, writes, mask)
        return hidden, self.target.logits(hidden)

    def _decoder(self, tokens, positions, writes, mask) -> torch.Tensor:
        """The stock HF decoder over the static cache with a custom 4-D mask: -> hidden [T, d]."""
        self.cache.write_positions = writes
        extra = {"cache_position": positions} if self._cache_position else {}
        output = self.target.decoder(
            input_ids=tokens[None],
            **{self.target._cache_argument: self.cache},
            position_ids=positions[None],
            attention_mask=mask,
            use_cache=True,
            **extra,
        )
        return output.last_hidden_state[0]

    def prefill(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Eager (its length varies): tokens [P] at positions/slots 0..P-1, causal.
        Returns (hidden [P, d], logits of the last token [1, V])."""
        count = tokens.shape[0]
        positions = self.slots[:count]
        visible = self.slots[None] <= positions[:, None]  # [P, C]
        mask = torch.where(visible, 0.0, self.min_value).to(self.target.dtype)[None, None]
        hidden = self._decoder(tokens, positions, positions, mask)
        return hidden, self.target.logits(hidden[-1:])

    # ------------------------------------------------------------------ masks
    def step_visibility(self, length: torch.Tensor) -> torch.Tensor:
        """One token at slot ``length`` ([1] long): it sees slots 0..length. -> [1, capacity] bool."""
        return (self.slots <= length)[None]

    def tree_visibility(self, length: torch.Tensor, ancestry: torch.Tensor) -> torch.Tensor:
        """T = root + tree tokens at slots length..length+T-1; ancestry: [T, T] bool (row i sees its
        ancestors and itself). -> [T, capacity] bool: the prefix, plus each token's ancestry."""
        count = ancestry.shape[0]
        offset = self.slots - length  # [C]: index into the tree for slots in it
        in_tree = (offset >= 0) & (offset < count)
        tree_part = ancestry[:, offset.clamp(0, count - 1)] & in_tree[None]  # [T, C]
        return (self.slots < length)[None] | tree_part

    def keep(self, start: torch.Tensor, keep: torch.Tensor) -> None:
        """Move entries ``start + keep`` ([P] long, ascending) to ``start .. start+P-1``: the accepted path
        becomes contiguous after the prefix (rows past the real count are harmless: they lie beyond the
        new length and are overwritten by the next pass)."""
        source = (start + keep).clamp(max=self.capacity - 1)
        target_slots = (start + torch.arange(keep.shape[0], device=keep.device)).clamp(max=self.capacity - 1)
        store = self.cache.store  # [L, 2, 1, KV, C, hd]: every layer's keys and values in one gather/scatter
        store.index_copy_(4, target_slots, store.index_select(4, source))

    def _initialize_cache(self) -> None:
        """Allocate every layer's store now (one eager token), so compiled passes never allocate it."""
        token = torch.zeros(1, dtype=torch.long, device=self.device)
        self._decoder(token, token, token, torch.zeros(1, 1, 1, self.capacity, dtype=self.target.dtype, device=self.device))
        self.cache.store.zero_()
