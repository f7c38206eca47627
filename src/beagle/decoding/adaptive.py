"""Never slower than plain decoding: measure what a round costs, and stop speculating when it loses.

A speculative round costs ``C`` plain steps (draft + one target pass over the tree + commit, measured once per
generator) and yields τ tokens (accepted + bonus); plain decoding yields one token per step. Speculation pays
while τ > C. :class:`AdaptivePolicy` watches the running mean τ of the current request and, after
``min_rounds`` rounds, falls back to plain steps for the rest of the request once mean τ < C · (1 + margin)
(the margin favours plain decoding when the two are close: a false fallback loses a little speed, a false
continuation is the slowdown this exists to prevent). The switch is reported in the stats (``mode``,
``fallback_at_token``) and logged.

:func:`measure_round_cost` times a few plain steps and rounds of a round state on a short dummy prompt, after one
warm-up of each (on a GPU that warm-up captures the phase graphs, which the first request would pay anyway):
wall time on a CPU, CUDA events on a GPU. It runs outside the decoding loop (``reserve()``, or before the first
request of a generator), and the state's next ``prefill`` starts a request afresh.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from beagle.decoding.sampling import GenerationSettings

logger = logging.getLogger(__name__)

MIN_ROUNDS = 4  # rounds before the running mean is trusted
MARGIN = 0.05  # speculation must beat plain decoding by this fraction to go on
MEASURE_PROMPT_TOKENS = 32
MEASURE_REPEATS = 5  # the fastest of these (a shared CPU's interruptions only ever add time)


@dataclass
class RoundCost:
    """step_seconds: one plain target step; round_seconds: one speculative round."""

    step_seconds: float
    round_seconds: float

    @property
    def steps(self) -> float:
        """What a round costs in plain steps (C)."""
        return self.round_seconds / self.step_seconds


def plain_step(state, settings: GenerationSettings, generator) -> int:
    """One plain target step through a round state, as fast as that state runs one.

    On the fast path this is :meth:`FastState.plain_step` (with CUDA graphs it replays the captured AR ``step``
    phase; ``tail_step`` runs it eagerly: right for a few tokens at the context limit, slow for the rest of a
    request); on the eager path the state's ``tail_step``.
    """
    if hasattr(state, "plain_step"):
        return state.plain_step(settings, generator)
    return state.tail_step(settings, generator)


def measure_round_cost(state, vocab_size: int, max_length: int, depth: int,
                       repeats: int = MEASURE_REPEATS) -> RoundCost:
    """Time plain steps and rounds of ``state`` (a round state with a draft) on a dummy greedy request."""
    device = torch.device(state.device)
    settings = GenerationSettings(max_new_tokens=2 * (repeats + 1) * (depth + 1), ignore_eos=True)
    length = max(1, min(MEASURE_PROMPT_TOKENS, max_length - settings.max_new_tokens - depth - 1))
    prompt = torch.arange(length, device=device) % vocab_size
    state.prefill(prompt, settings, None)
    step = _fastest(device, lambda: plain_step(state, settings, None), repeats)
    state.prefill(prompt, settings, None)  # rounds from a consistent state (the steps left the draft behind)
    speculative_round = _fastest(device, lambda: state.round(settings, None), repeats)
    return RoundCost(step, speculative_round)


def _fastest(device: torch.device, call: Callable[[], object], repeats: int) -> float:
    """Seconds of the fastest of ``repeats`` calls, after one warm-up call."""
    call()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            call()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            clock = time.perf_counter()
            call()
            times.append(time.perf_counter() - clock)
    return max(min(times), 1e-9)


class AdaptivePolicy:
    """Per request: ``observe(tokens)`` after each round; ``should_fall_back()`` once the mean loses."""

    def __init__(self, round_cost_steps: float, min_rounds: int = MIN_ROUNDS, margin: float = MARGIN):
        self.round_cost_steps = round_cost_steps
        self.min_rounds = min_rounds
        self.margin = margin
        self.rounds = 0
        self.tokens = 0

    def observe(self, tokens: int) -> None:
        self.rounds += 1
        self.tokens += tokens

    @property
    def mean_tokens(self) -> float:
        return self.tokens / self.rounds if self.rounds else 0.0

    def should_fall_back(self) -> bool:
        return self.rounds >= self.min_rounds and self.mean_tokens < self.round_cost_steps * (1 + self.margin)
