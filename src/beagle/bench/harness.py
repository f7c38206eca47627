"""The benchmark harness: every method on every prompt in one run, interleaved.

Methods (names as in results.json):

- ``ar``: our engine without a draft (one token per target pass) — the reference for exact match; on a GPU
  the fast path (compiled, CUDA graphs) unless ``fast=False``.
- ``ar-eager``: our engine without a draft on the eager path.
- ``hf``: Hugging Face ``model.generate`` plain greedy / sampling, same max_new_tokens and EOS ids.
- ``hf-static``: ``model.generate(cache_implementation="static")``: HF's static cache, whose decoding step
  transformers compiles itself on a GPU — the plain method a user would pick for speed.
- ``hf-pld``: Hugging Face prompt-lookup decoding (``prompt_lookup_num_tokens=10``).
- ``<name>``: our engine with the draft ``<name>``; for Beagle drafts also ``<name>-noconcat``
  (``concat=False``: tree nodes see the true target states only).

Protocol: one untimed warm-up generation per method (first prompt, ``warmup_tokens`` new tokens),
then for each prompt turn every method runs once, in an order rotated by one method per turn,
before the next turn starts — so slow drift of the machine (clocks, thermals, other jobs) hits
every method alike. Each call is timed with the wall clock (``torch.cuda.synchronize`` before
and after on CUDA); for our engine the timed call is ``SpeculativeGenerator.generate`` (which
includes detokenizing the output, a negligible cost), for HF it is ``model.generate``.

Multi-turn prompts (MT-Bench): turn 1 is timed for every method; turn 2 is then timed with the
same context for every method: turn 1 plus *our greedy AR answer* to turn 1 as the assistant
message (taken from the ``ar`` method at temperature 0, otherwise from an extra untimed greedy
AR generation).

cuDNN attention: by default the run disables PyTorch's cuDNN SDPA backend (``cudnn_sdp=False``), for
every method, as every Beagle entry point does on CUDA (:mod:`beagle.kernels.attention_backend`). cuDNN
builds an execution plan for every new attention shape (query length × key length) and decoding meets a
new one at nearly every call, which makes decoding several times slower (``docs/results/cudnn-h200``,
measured with ``bench/gpu/round_cost.py``).
Flash / memory-efficient SDPA have no such cost, so "off" is every method's faster setting.
``cudnn_sdp=None`` leaves the setting alone; the state used is in ``environment``.

Prompts whose token count plus max_new_tokens exceeds the target's context are skipped (listed
under ``prompts.skipped``).

Speed claims are ratios against the fastest plain (draft-free) method of the same run: ``speedup_vs_best_plain``
(and ``best_plain`` names it); ``speedup_vs_ar`` / ``speedup_vs_hf`` are kept beside it. The warm-up pays the
compilations and graph captures: our engine reserves its largest cache first, and ``hf-static`` warms up on
two prompt lengths (its cache is sized per call, so its second length triggers transformers' recompilation).
"""

from __future__ import annotations

import dataclasses
import datetime as _datetime
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from beagle.data.prompt_sets import BenchPrompt, as_prompts, prompt_ids
from beagle.bench.summary import BASELINES, environment, summarize
from beagle.decoding.engine import SpeculativeGenerator
from beagle.decoding.sampling import GenerationSettings
from beagle.decoding.stats import DecodeStats
from beagle.decoding.tree import TreeSettings, default_tree
from beagle.errors import BeagleError
from beagle.kernels.attention_backend import cudnn_sdp_backend

logger = logging.getLogger(__name__)

SCHEMA = "beagle-bench/1"
DEFAULT_BASELINES = ("ar", "hf", "hf-static", "hf-pld")
PLD_NUM_TOKENS = 10
NOCONCAT_SUFFIX = "-noconcat"


@dataclass
class Method:
    """name: as reported; kind: one of BASELINES or "draft"; draft: the draft's name; concat: Beagle mode."""

    name: str
    kind: str
    draft: str | None = None
    concat: bool = True
    arch: str | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def resolve_methods(methods: Sequence[str] | str | None, drafts: dict, noconcat: bool = True) -> list[Method]:
    """Expand a method list into :class:`Method` s.

    ``methods``: names among ``ar``, ``ar-eager``, ``hf``, ``hf-static``, ``hf-pld``, ``drafts`` (every draft
    method), a draft's name or ``<name>-noconcat``; a comma-separated string is accepted. ``None`` = all
    but ``ar-eager``.
    ``noconcat``: whether ``drafts`` includes the ``-noconcat`` variants of Beagle drafts.
    """
    draft_methods: list[Method] = []
    for name, draft in drafts.items():
        if name in BASELINES or name == "drafts":
            raise BeagleError(f"draft name {name!r} clashes with a method name; pick another --draft-name")
        arch = getattr(draft.config, "arch", None)
        draft_methods.append(Method(name, "draft", name, True, arch))
        if arch == "beagle":
            draft_methods.append(Method(name + NOCONCAT_SUFFIX, "draft", name, False, arch))
    known = {method.name: method for method in draft_methods}
    if methods is None:
        methods = [*DEFAULT_BASELINES, "drafts"]
    elif isinstance(methods, str):
        methods = [m.strip() for m in methods.split(",") if m.strip()]
    chosen: list[Method] = []
    for token in methods:
        if token in BASELINES:
            expanded = [Method(token, token)]
        elif token == "drafts":
            expanded = [m for m in draft_methods if noconcat or m.concat]
        elif token in known:
            expanded = [known[token]]
        else:
            hint = f"; draft methods: {', '.join(known)}" if known else " (no drafts given)"
            raise BeagleError(f"unknown method {token!r}: use {', '.join(BASELINES)}, drafts or a draft method{hint}")
        for method in expanded:
            if method.name not in {m.name for m in chosen}:
                chosen.append(method)
    if not chosen:
        raise BeagleError("no methods to benchmark")
    return chosen


def rotated(methods: Sequence, index: int) -> list:
    """The run order for the index-th prompt turn: the method list rotated left by ``index``."""
    if not methods:
        return []
    shift = index % len(methods)
    return list(methods[shift:]) + list(methods[:shift])


# ------------------------------------------------------------------ runners
@dataclass
class _Run:
    token_ids: list[int]
    text: str
    time_s: float
    stats: DecodeStats | None = None
    peak_memory: int | None = None
    memory_baseline: int | None = None


class _Runner:
    """Runs one method on prompt ids and times it."""

    def __init__(self, method: Method, target, drafts: dict, tree: TreeSettings, eos_ids: set[int],
                 fast: bool | None = None, compile: bool | None = None):
        self.method = method
        self.target = target
        self.eos_ids = sorted(eos_ids)
        self.generator = None
        if method.kind == "ar":
            self.generator = SpeculativeGenerator(target, None, tree, fast=fast, compile=compile)
        elif method.kind == "ar-eager":
            self.generator = SpeculativeGenerator(target, None, tree, fast=False)
        elif method.kind == "draft":
            self.generator = SpeculativeGenerator(target, drafts[method.draft], tree, concat=method.concat,
                                                  fast=fast, compile=compile, adaptive=False)  # raw speculation
        tokenizer = target.tokenizer
        pad = getattr(tokenizer, "pad_token_id", None) if tokenizer is not None else None
        self.pad_id = pad if isinstance(pad, int) else (self.eos_ids[0] if self.eos_ids else 0)

    def run(self, ids: list[int], settings: GenerationSettings) -> _Run:
        device = self.target.device
        cuda = torch.device(device).type == "cuda"
        baseline = None
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
            baseline = torch.cuda.memory_allocated(device)
        if self.generator is not None:
            _synchronize(device)
            start = time.perf_counter()
            output = self.generator.generate(ids, settings)
            _synchronize(device)
            elapsed = time.perf_counter() - start
            run = _Run(output.token_ids, output.text, elapsed, output.stats)
        else:
            tokens, elapsed = self._hf(ids, settings)
            text = self.target.tokenizer.decode(tokens, skip_special_tokens=True) if self.target.tokenizer else ""
            run = _Run(tokens, text, elapsed)
        if cuda:
            run.peak_memory = int(torch.cuda.max_memory_allocated(device))
            run.memory_baseline = int(baseline)
        return run

    def _hf(self, ids: list[int], settings: GenerationSettings) -> tuple[list[int], float]:
        from transformers import GenerationConfig

        model = self.target.model
        device = self.target.device
        input_ids = torch.tensor([ids], device=device)
        kwargs = {
            "attention_mask": torch.ones_like(input_ids),
            "max_new_tokens": settings.max_new_tokens,
            "eos_token_id": self.eos_ids or None,
            "pad_token_id": self.pad_id,
            "do_sample": not settings.greedy,
        }
        if not settings.greedy:
            kwargs.update(temperature=settings.temperature, top_p=settings.top_p, top_k=settings.top_k)
        if self.method.kind == "hf-pld":
            kwargs["prompt_lookup_num_tokens"] = PLD_NUM_TOKENS
        if self.method.kind == "hf-static":
            kwargs["cache_implementation"] = "static"
        # A plain generation config, so that defaults stored with the model (repetition penalty,
        # top-k 50 ...) cannot make HF decode differently from our engine.
        plain = GenerationConfig()
        saved = model.generation_config
        try:
            model.generation_config = plain
            if not settings.greedy and settings.seed is not None:
                torch.manual_seed(settings.seed)
            _synchronize(device)
            start = time.perf_counter()
            with torch.no_grad():
                output = model.generate(input_ids, **kwargs)
            _synchronize(device)
            elapsed = time.perf_counter() - start
        finally:
            model.generation_config = saved
        return output[0, len(ids):].tolist(), elapsed


# -------------------------------------------------------------------- main
def run_benchmark(
    target,
    drafts: dict | None = None,
    prompts: Sequence[BenchPrompt | str | dict] = (),
    settings: GenerationSettings | None = None,
    methods: Sequence[str] | str | None = None,
    out_dir=None,
    tree: TreeSettings | None = None,
    *,
    noconcat: bool = True,
    warmup_tokens: int = 64,
    progress: bool = True,
    command: str | None = None,
    prompt_source: str | None = None,
    draft_paths: dict | None = None,
    plots: bool = True,
    cudnn_sdp: bool | None = False,
    time_budget: float | None = None,
    fast: bool | None = None,
    compile: bool | None = None,
) -> dict:
    """Benchmark ``methods`` on ``prompts`` and return the results dict (written to ``out_dir`` when given).

    target: a :class:`~beagle.target_model.model.TargetModel`; drafts: {name: draft model};
    prompts: :class:`~beagle.data.prompt_sets.BenchPrompt` s (or strings / prompt-file records);
    settings: generation settings shared by every method (no stop strings; seed = base seed, the
    n-th prompt turn uses seed + n); methods: see :func:`resolve_methods`; tree: draft tree settings;
    noconcat: add ``<name>-noconcat`` for Beagle drafts; warmup_tokens: new tokens of the warm-up
    generation per method (0 = no warm-up); command / prompt_source / draft_paths: recorded as is;
    cudnn_sdp: the cuDNN attention backend during the run (default off, see the module docstring;
    None = as set globally); plots: draw the PNGs when writing to ``out_dir``; time_budget: seconds
    of timed prompts (the warm-up excluded) after which no new prompt is started (the prompts done so far are reported, and
    ``prompts.stopped_early`` says so); fast: our engine's methods (ar and the drafts) on the fast path
    (:mod:`beagle.decoding.fast`; None = on a GPU only, False = eager);
    compile: torch.compile the fast path's target pass (None = on a GPU).

    The results dict is described in :mod:`beagle.bench.report` (``results.json``).
    """
    wall_start = time.perf_counter()
    started_at = _datetime.datetime.now(_datetime.timezone.utc).isoformat(timespec="seconds")
    drafts = dict(drafts or {})
    settings = dataclasses.replace(settings or GenerationSettings()).validate()
    tree = (tree or default_tree(target.device)).validate(target.vocab_size)
    if settings.stop:
        raise BeagleError("stop strings are not supported by the benchmark (HF generate would not stop alike)")
    prompts = as_prompts(prompts)
    if not prompts:
        raise BeagleError("no prompts to benchmark")
    chosen = resolve_methods(methods, drafts, noconcat)
    names = [m.name for m in chosen]
    if settings.ignore_eos and any(m.kind.startswith("hf") for m in chosen):
        raise BeagleError("ignore_eos is not supported with the hf methods")
    eos_ids = target.eos_token_ids()
    runners = {m.name: _Runner(m, target, drafts, tree, eos_ids, fast, compile) for m in chosen}
    reference = runners["ar"] if "ar" in runners else _Runner(Method("ar", "ar"), target, drafts, tree, eos_ids,
                                                             fast, compile)
    total_turns = sum(len(p.turns) for p in prompts)
    logger.info("benchmarking %s on %d prompts (%d turns)", ", ".join(names), len(prompts), total_turns)

    with cudnn_sdp_backend(cudnn_sdp):
        sdp_state = torch.backends.cuda.cudnn_sdp_enabled() if hasattr(torch.backends.cuda, "cudnn_sdp_enabled") else None
        if warmup_tokens > 0:
            _warm_up(target, prompts, settings, [runners[name] for name in names], warmup_tokens)
        bar = _progress_bar(total_turns * len(names), progress)
        try:
            deadline = None if time_budget is None else time.perf_counter() + time_budget  # after the warm-up
            records, skipped = _timed_turns(target, prompts, settings, names, runners, reference, bar, deadline)
        finally:
            bar.close()

    summary = summarize(records, names)
    completed = {r["prompt_id"] for r in records}
    results = {
        "schema": SCHEMA,
        "started_at": started_at,
        "command": command,
        "environment": {**environment(target.device), "cudnn_sdp": sdp_state,
                        "fast_attention": getattr(target, "fast_attention", "sdpa")},
        "target": {**target.fingerprint(), "dtype": str(target.dtype).replace("torch.", ""),
                   "device": str(target.device), "max_length": target.max_length},
        "drafts": {
            name: {
                "arch": getattr(draft.config, "arch", None),
                "parameters": int(sum(p.numel() for p in draft.parameters())),
                "dtype": str(next(draft.parameters()).dtype).replace("torch.", ""),
                "path": (draft_paths or {}).get(name),
            }
            for name, draft in drafts.items()
        },
        "settings": {
            "generation": {k: v for k, v in dataclasses.asdict(settings).items() if k != "stop"},
            "tree": dataclasses.asdict(tree),
            "methods": [m.to_dict() for m in chosen],
            "warmup_tokens": warmup_tokens,
            "fast": {name: bool(r.generator.fast) for name, r in runners.items() if r.generator is not None},
            "compile_and_capture_s": {name: round(r.generator.warmup_seconds, 3) for name, r in runners.items()
                                      if r.generator is not None},
            "pld_num_tokens": PLD_NUM_TOKENS,
            "interleaving": "per prompt turn, method order rotated left by one each turn",
            "turn2_context": "turn-1 user message + our greedy AR turn-1 answer",
        },
        "prompts": {
            "source": prompt_source,
            "count": len(prompts),
            "turns": total_turns,
            "timed_turns": len(records),
            "categories": sorted({r["category"] for r in records}),
            "skipped": skipped,
            "completed": len(completed),
            "stopped_early": len(completed | {s["prompt_id"] for s in skipped}) < len(prompts),
        },
        "summary": summary,
        "by_category": {
            category: summarize([r for r in records if r["category"] == category], names, brief=True)
            for category in sorted({r["category"] for r in records})
        },
        "by_turn": {
            str(turn): summarize([r for r in records if r["turn"] == turn], names, brief=True)
            for turn in sorted({r["turn"] for r in records})
        },
        "records": records,
    }
    results["wall_time_s"] = round(time.perf_counter() - wall_start, 3)
    if out_dir is not None:
        from beagle.bench.report import write_results

        results["outputs"] = {key: str(path) for key, path in write_results(results, out_dir, plots=plots).items()}
    return results


def _timed_turns(target, prompts, settings, names, runners, reference, bar, deadline=None) -> tuple[list[dict], list[dict]]:
    """Every method on every prompt turn, in rotating order; returns (records, skipped turns).
    deadline: a time.perf_counter() value after which no new prompt is started."""
    greedy = dataclasses.replace(settings, temperature=0.0, seed=None)
    records: list[dict] = []
    skipped: list[dict] = []
    for number, prompt in enumerate(prompts):
        if deadline is not None and time.perf_counter() > deadline:
            logger.warning("time budget spent: stopping after %d of %d prompts", number, len(prompts))
            break
        answers: list[str] = []  # our greedy AR answers, the context of later turns
        for turn in range(len(prompt.turns)):
            ids = prompt_ids(target, prompt, turn, answers)
            if len(ids) + settings.max_new_tokens > target.max_length:
                logger.debug("skipping prompt %s turn %d: %d prompt tokens + %d new tokens exceed the target's "
                             "context (%d)", prompt.id, turn + 1, len(ids), settings.max_new_tokens, target.max_length)
                for later in range(turn, len(prompt.turns)):
                    skipped.append({"prompt_id": prompt.id, "turn": later + 1, "prompt_tokens": len(ids),
                                    "reason": "prompt + max_new_tokens exceed the target's context"})
                bar.update(len(names) * (len(prompt.turns) - turn))
                break
            index = len(records)
            seed = settings.seed + index if settings.seed is not None else None
            turn_settings = dataclasses.replace(settings, seed=seed)
            order = rotated(names, index)
            results: dict[str, dict] = {}
            for name in order:
                bar.set_postfix_str(f"{prompt.id}/{turn + 1} {name}")
                results[name] = _run_record(runners[name].run(ids, turn_settings), runners[name].method)
                bar.update(1)
            _compare(results, settings)
            records.append({
                "prompt_id": prompt.id,
                "category": prompt.category,
                "turn": turn + 1,
                "prompt_tokens": len(ids),
                "seed": seed,
                "order": order,
                "methods": {name: results[name] for name in names},
            })
            if turn + 1 < len(prompt.turns):
                if "ar" in results and settings.greedy:
                    answers.append(results["ar"]["text"])
                else:
                    answers.append(reference.run(ids, greedy).text)
    if skipped:
        logger.warning("skipped %d prompt turns whose prompt + max_new_tokens (%d) exceed the target's context (%d)",
                       len(skipped), settings.max_new_tokens, target.max_length)
    return records, skipped


def _warm_up(target, prompts: list[BenchPrompt], settings: GenerationSettings, runners: list, tokens: int) -> None:
    """Untimed warm-up: one generation of ``tokens`` new tokens per method on the first prompt that fits
    (our engine first reserves its cache for the longest prompt turn; ``hf-static`` also runs a second,
    shorter prompt, see the module docstring)."""
    warm = dataclasses.replace(settings, max_new_tokens=min(settings.max_new_tokens, tokens))
    longest = max((len(prompt_ids(target, prompt, 0)) for prompt in prompts), default=0)
    # Turn 2 carries turn 1 and an answer: allow for it.
    longest = min(longest + (settings.max_new_tokens + 64) * (max(len(p.turns) for p in prompts) - 1)
                  + 64 * max(len(p.turns) for p in prompts), target.max_length - settings.max_new_tokens)
    for runner in runners:
        if runner.generator is not None:
            runner.generator.reserve(max(longest, 1), settings.max_new_tokens)
    for prompt in prompts:
        ids = prompt_ids(target, prompt, 0)
        if len(ids) + warm.max_new_tokens <= target.max_length:
            for runner in runners:
                runner.run(ids, warm)
                if runner.method.kind == "hf-static" and len(ids) > 1:
                    runner.run(ids[: max(1, len(ids) // 2)], warm)
            return


def _run_record(run: _Run, method: Method) -> dict:
    record = {
        "new_tokens": len(run.token_ids),
        "time_s": run.time_s,
        "tokens_per_s": len(run.token_ids) / run.time_s if run.time_s > 0 else 0.0,
        "token_ids": run.token_ids,
        "text": run.text,
        "peak_memory_bytes": run.peak_memory,
        "memory_baseline_bytes": run.memory_baseline,
    }
    if run.stats is not None:
        record["target_passes"] = run.stats.target_passes
        record["stop_reason"] = run.stats.stop_reason
        record["stats"] = run.stats.to_dict()
        if method.kind == "draft":
            record["accept_lengths"] = list(run.stats.accept_lengths)
            record["tree_depths"] = list(run.stats.tree_depths)
    return record


def _compare(results: dict[str, dict], settings: GenerationSettings) -> None:
    """At temperature 0: does each method's output equal our AR's token for token?"""
    reference = results.get("ar")
    for entry in results.values():
        if reference is None or not settings.greedy:
            entry["exact_match"] = None
            entry["first_mismatch"] = None
            continue
        mine, theirs = entry["token_ids"], reference["token_ids"]
        entry["exact_match"] = mine == theirs
        mismatch = next((i for i, (a, b) in enumerate(zip(mine, theirs)) if a != b), None)
        if mismatch is None and len(mine) != len(theirs):
            mismatch = min(len(mine), len(theirs))
        entry["first_mismatch"] = mismatch


def _progress_bar(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc="bench", unit="gen", disable=not enabled, dynamic_ncols=True)


def _synchronize(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
