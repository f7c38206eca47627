"""The decoding engine: autoregressive and speculative (EAGLE-2 dynamic tree) through one code path.

One round of speculative decoding::

    root token (decided, not yet in the target cache) ─┐
    draft tree (build_tree) ──────────────────────────┤─> one target pass over [root, tree]
                                                       │   with the tree mask (verification)
    accept_path ──> target cache keeps root + accepted path (contiguous)
                ──> draft commits their true states (start_round) and drafts the bonus token's root

Without a draft the same target code runs one token per pass (the AR baseline).

Two implementations of the round, chosen per generator:

- the **fast path** (:mod:`beagle.decoding.fast`, the default on a GPU): all four phases at fixed shapes
  over static buffers, the target pass compiled, each phase replayed as a CUDA graph, one host read per
  round;
- the **eager path** (:mod:`beagle.decoding.eager`, the default on a CPU, ``fast=False`` / ``--eager``
  elsewhere): the same algorithm with growing caches and Python control flow.

Both are round states with the same three steps (``prefill``, ``round``, ``tail_step``), and
:meth:`SpeculativeGenerator._rounds` is the one loop over them.

Both give the target's own tokens (tests compare them in fp32). Batch size 1.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from beagle.decoding.adaptive import AdaptivePolicy, measure_round_cost, plain_step
from beagle.decoding.detokenize import IncrementalDetokenizer, StopStringScanner
from beagle.decoding.eager import EagerState
from beagle.decoding.fast import FastState
from beagle.decoding.sampling import GenerationSettings
from beagle.decoding.stats import DecodeStats
from beagle.decoding.tree import TreeSettings, default_tree
from beagle.decoding.verify import FastVerifier, TreeVerifier
from beagle.errors import BeagleError

logger = logging.getLogger(__name__)


@dataclass
class GenerationOutput:
    token_ids: list[int]
    text: str
    stats: DecodeStats = field(default_factory=DecodeStats)

    def to_dict(self) -> dict:
        return {"text": self.text, "token_ids": self.token_ids, "stats": self.stats.to_dict()}


class SpeculativeGenerator:
    """Generate with ``target`` (a :class:`~beagle.target_model.model.TargetModel`), speculatively when
    ``draft`` is given. ``tree`` sets the dynamic tree; ``concat=False`` is Beagle's no-concat mode.

    fast: the fixed-shape path (None = on a GPU only; on a CPU it runs eagerly over static buffers, which
    is slower than the eager path there).
    compile: ``torch.compile`` the fast path's target pass (None = on a GPU). graphs: capture the fast
    path's phases as CUDA graphs (None = on a GPU). The first call of a new capacity or sampling setting
    pays compilation/capture once (``warmup_seconds``).

    adaptive: never slower than plain decoding (:mod:`beagle.decoding.adaptive`): the round's cost in plain steps
    is measured once (at :meth:`reserve`, else before the first request), and a request whose rounds yield
    fewer tokens than they cost continues with plain steps (``stats.mode == "fallback"``). ``adaptive=False``
    speculates to the end (benchmarks of raw speculation). round_cost: a known round cost in plain steps
    (skips the measurement).
    """

    def __init__(self, target, draft=None, tree: TreeSettings | None = None, concat: bool = True, verifier=None,
                 fast: bool | None = None, compile: bool | None = None,
                 graphs: bool | None = None, fast_verifier: FastVerifier | None = None,
                 compile_backend: str = "inductor", adaptive: bool = True, round_cost: float | None = None):
        self.target = target
        on_gpu = target.device.type == "cuda"
        self.fast = on_gpu if fast is None else bool(fast)
        self.compile = self.fast and (on_gpu if compile is None else bool(compile))
        self.graphs = self.fast and (on_gpu if graphs is None else bool(graphs))
        if self.graphs and not on_gpu:
            raise BeagleError("CUDA graphs need a GPU; run with graphs=False on a CPU")
        if self.fast and not on_gpu:
            logger.info("fast path without a GPU: the fixed-shape phases run eagerly over static buffers "
                        "(slower than the eager path on a CPU; same tokens)")
        self.compile_backend = compile_backend
        self.verifier = verifier or TreeVerifier()
        self.fast_verifier = fast_verifier or FastVerifier()
        self.draft = draft
        self.tree = tree or default_tree(target.device)
        if draft is not None:
            self.tree.validate(target.vocab_size)
        self.concat = concat
        if draft is not None:
            draft.config.check_target(target.fingerprint())
            if draft._shared is None:
                draft.bind_target(target)
        self.eos_ids = target.eos_token_ids()
        self.last_stats = DecodeStats()
        self.keep_last_cache = False  # tests inspect the target cache of the last call
        self.last_target_cache = None
        self._fast_state: FastState | None = None
        self.adaptive = adaptive and draft is not None
        self.round_cost_steps = round_cost  # C: a round's cost in plain steps (None: not measured yet)
        self._fallback_logged = False

    def reserve(self, prompt_tokens: int, max_new_tokens: int) -> None:
        """Size the fast path's buffers for requests up to these lengths now and, with graphs or compilation,
        pay every compilation and capture a request can meet (each sampling mode, rounds, tail and plain
        steps), so that no later call compiles or captures; and measure the round cost (adaptive) now,
        outside any request."""
        state = self._state(prompt_tokens, GenerationSettings(max_new_tokens=max_new_tokens))
        if self.fast and (self.graphs or self.compile):
            state.warm_up()
        if self.adaptive and self.round_cost_steps is None:
            self._measure_round_cost(state)

    def _measure_round_cost(self, state) -> None:
        cost = measure_round_cost(state, self.target.vocab_size, self.target.max_length, self.tree.depth)
        self.round_cost_steps = cost.steps
        logger.info("a speculative round costs %.2f plain steps (%.2f ms vs %.2f ms); below that many tokens per "
                    "round a request continues without speculation", cost.steps, 1e3 * cost.round_seconds,
                    1e3 * cost.step_seconds)

    @property
    def warmup_seconds(self) -> float:
        """Seconds spent compiling the target pass and capturing the phase graphs so far (fast path)."""
        state = self._fast_state
        return 0.0 if state is None else state.passes.compile_seconds + state.capture_seconds

    # ---------------------------------------------------------------- API
    def generate(self, prompt_ids, settings: GenerationSettings | None = None, **overrides) -> GenerationOutput:
        """prompt_ids: list[int] or [T] / [1, T] tensor. Returns the new tokens, their text and stats."""
        settings = _settings(settings, overrides)
        stats = DecodeStats()
        tokens: list[int] = []
        for chunk in self._accepted_chunks(prompt_ids, settings, stats):
            tokens.extend(chunk)
        text = self._decode(tokens)
        tokens, text = self._apply_stop_strings(tokens, text, settings, stats)
        self.last_stats = stats
        return GenerationOutput(tokens, text, stats)

    def chat(self, messages: list[dict], settings: GenerationSettings | None = None, **overrides) -> GenerationOutput:
        """messages: [{"role", "content"}, ...] rendered with the target's chat template."""
        return self.generate(self.target.encode_chat(messages), settings, **overrides)

    def stream(self, prompt_ids, settings: GenerationSettings | None = None, **overrides) -> Iterator[str]:
        """Yield text chunks as tokens are accepted; ``self.last_stats`` holds the stats afterwards. The chunks
        concatenate to the text of all tokens (up to a stop string); each round decodes a few tokens only
        (:mod:`beagle.decoding.detokenize`)."""
        settings = _settings(settings, overrides)
        stats = DecodeStats()
        self.last_stats = stats
        detokenizer = IncrementalDetokenizer(self.target.tokenizer)
        scanner = StopStringScanner(settings.stop)
        for chunk in self._accepted_chunks(prompt_ids, settings, stats):
            text, stopped = scanner.feed(detokenizer.push(chunk))
            if text:
                yield text
            if stopped:
                stats.stop_reason = "stop_string"
                return
        text, stopped = scanner.feed(detokenizer.flush())
        text += "" if stopped else scanner.finish()
        if stopped:
            stats.stop_reason = "stop_string"
        if text:
            yield text

    # --------------------------------------------------------- token rounds
    def _accepted_chunks(self, prompt_ids, settings: GenerationSettings, stats: DecodeStats) -> Iterator[list[int]]:
        """Tokens per target pass, truncated at EOS and max_new_tokens."""
        prompt = _as_list(prompt_ids)
        self._check_lengths(prompt, settings)
        started = time.perf_counter()
        emitted = 0
        try:
            rounds = self._rounds(prompt, settings, stats)
            for chunk in rounds:
                chunk = chunk[: settings.max_new_tokens - emitted]
                if not settings.ignore_eos:
                    for index, token in enumerate(chunk):
                        if token in self.eos_ids:
                            chunk = chunk[: index + 1]
                            stats.stop_reason = "eos"
                            break
                emitted += len(chunk)
                stats.new_tokens = emitted
                yield chunk
                if stats.stop_reason == "eos":
                    break
                if emitted >= settings.max_new_tokens:
                    stats.stop_reason = "length"
                    break
        finally:
            _synchronize(self.target.device)
            stats.time_total = time.perf_counter() - started

    def _rounds(self, prompt: list[int], settings, stats) -> Iterator[list[int]]:
        """One loop for both paths over a round state (:class:`EagerState` or :class:`FastState`): prefill,
        then rounds, then plain steps where a full-depth tree would pass the context limit. The fast path
        keeps no timers in the loop (its phases' time is the total minus prefill; draft / verify stay 0)."""
        generator = None
        if not settings.greedy:
            generator = torch.Generator(device=self.target.device)
            generator.manual_seed(settings.seed if settings.seed is not None else torch.seed())
        state = self._state(len(prompt), settings)
        if self.adaptive and self.round_cost_steps is None:
            self._measure_round_cost(state)
        policy = AdaptivePolicy(self.round_cost_steps) if self.adaptive else None
        stats.mode = "speculative" if self.draft is not None else "autoregressive"
        stats.round_cost_steps = self.round_cost_steps
        clock = time.perf_counter()
        try:
            token = state.prefill(torch.tensor(prompt, device=self.target.device), settings, generator)
            self.last_target_cache = _target_cache(state) if self.keep_last_cache else None
            stats.target_passes += 1
            stats.time_prefill += time.perf_counter() - clock  # includes the first token's host read
            yield [token]
            position = len(prompt)  # of the root token, the next input to the target
            depth = 0 if self.draft is None else self.tree.depth
            while True:
                if stats.mode == "fallback":
                    token = plain_step(state, settings, generator)
                    stats.target_passes += 1
                    yield [token]
                    continue
                if position + depth >= self.target.max_length:  # a full tree would pass the context limit
                    token = state.tail_step(settings, generator)
                    stats.target_passes += 1
                    position += 1
                    yield [token]
                    continue
                output = state.round(settings, generator)
                stats.target_passes += 1
                position += len(output.tokens)
                if self.draft is not None:
                    stats.accept_lengths.append(len(output.tokens) - 1)
                    stats.tree_depths.append(output.tree_depth)
                yield output.tokens
                if policy is not None:
                    policy.observe(len(output.tokens))
                    if policy.should_fall_back():
                        self._fall_back(stats, policy, position - len(prompt) + 1)
        finally:
            timings = getattr(state, "timings", None)
            if timings is not None:
                stats.time_draft += timings["draft"]
                stats.time_verify += timings["verify"]

    def _fall_back(self, stats: DecodeStats, policy: AdaptivePolicy, emitted: int) -> None:
        stats.mode, stats.fallback_at_token = "fallback", emitted
        log = logger.debug if self._fallback_logged else logger.info
        self._fallback_logged = True
        log("speculation loses for this request (%.2f tokens per round after %d rounds, a round costs %.2f plain "
            "steps): plain decoding from token %d on", policy.mean_tokens, policy.rounds, policy.round_cost_steps,
            emitted)

    def _state(self, prompt_length: int, settings: GenerationSettings) -> "EagerState | FastState":
        if not self.fast:
            return EagerState(self.target, self.draft, self.tree, self.concat, self.verifier)
        return self._fast(prompt_length, settings)

    def _fast(self, prompt_length: int, settings: GenerationSettings) -> FastState:
        """The fast path's buffers, reused while the capacity fits (graphs are captured per state)."""
        extra = 1 if self.draft is None else self.tree.depth + min(self.tree.total_tokens, self.tree.max_nodes()) + 2
        needed = prompt_length + settings.max_new_tokens + extra
        state = self._fast_state
        if state is None or state.capacity < needed or state.passes is not getattr(self.target, "_beagle_fixed_passes", None):
            self._fast_state = None  # release graphs before new buffers
            state = FastState(self.target, self.draft, self.tree if self.draft is not None else None, needed,
                              self.concat, self.graphs, self.compile, self.fast_verifier, self.compile_backend)
            self._fast_state = state
        return state

    # ------------------------------------------------------------- helpers
    def _check_lengths(self, prompt: list[int], settings: GenerationSettings) -> None:
        if not prompt:
            raise BeagleError("the prompt is empty; give at least one token")
        vocab = self.target.vocab_size
        if min(prompt) < 0 or max(prompt) >= vocab:
            raise BeagleError(f"prompt token ids must be in [0, {vocab}); got {min(prompt)}..{max(prompt)}")
        limit = self.target.max_length
        if len(prompt) + settings.max_new_tokens > limit:
            raise BeagleError(
                f"prompt ({len(prompt)} tokens) + max_new_tokens ({settings.max_new_tokens}) exceeds the "
                f"target's context length ({limit}); shorten the prompt or lower max_new_tokens"
            )

    def _decode(self, tokens: list[int]) -> str:
        tokenizer = self.target.tokenizer
        return tokenizer.decode(tokens, skip_special_tokens=True) if tokenizer is not None else ""

    def _apply_stop_strings(self, tokens, text, settings, stats):
        cut = _find_stop(text, settings.stop)
        if cut is None:
            return tokens, text
        stats.stop_reason = "stop_string"
        # Keep the shortest token prefix whose text reaches the stop string.
        for count in range(1, len(tokens) + 1):
            if _find_stop(self._decode(tokens[:count]), settings.stop) is not None:
                return tokens[:count], text[:cut]
        return tokens, text[:cut]


def _settings(settings: GenerationSettings | None, overrides: dict) -> GenerationSettings:
    settings = settings or GenerationSettings()
    if overrides:
        settings = GenerationSettings(**{**settings.__dict__, **overrides})
    return settings.validate()


def _find_stop(text: str, stops: list[str]) -> int | None:
    positions = [text.find(stop) for stop in stops if stop]
    positions = [p for p in positions if p >= 0]
    return min(positions) if positions else None


def _as_list(prompt_ids) -> list[int]:
    if isinstance(prompt_ids, torch.Tensor):
        if prompt_ids.dim() == 2:
            if prompt_ids.shape[0] != 1:
                raise BeagleError(f"batch size must be 1, got prompt of shape {tuple(prompt_ids.shape)}")
            prompt_ids = prompt_ids[0]
        return [int(t) for t in prompt_ids.tolist()]
    return [int(t) for t in prompt_ids]


def _target_cache(state):
    """The target KV cache a round state writes (tests compare it with an AR cache)."""
    return state.target_cache if isinstance(state, EagerState) else state.passes.cache


def _synchronize(device: torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
