"""Benchmark outputs: ``results.json``, ``results.md`` and PNG plots.

results.json (schema ``beagle-bench/1``) holds everything :func:`~beagle.bench.harness.run_benchmark`
returns: ``command``, ``started_at``, ``wall_time_s``, ``environment`` (device name, torch /
transformers / CUDA versions, git commit), ``target``, ``drafts``, ``settings``, ``prompts``
(source, counts, skipped turns), ``summary`` (per method), ``by_category`` / ``by_turn`` (per
method, per category / turn), ``records`` (one per timed prompt turn, with every method's token
ids, text, time and stats) and ``outputs`` (the written paths).

Metrics (``summary[method]``), all over the timed prompt turns:

- ``tokens_per_s``: total new tokens / total wall time of the timed calls.
- ``speedup_vs_best_plain``: tokens_per_s / that of the fastest plain (draft-free) method of the run,
  named by ``best_plain`` (``ar``, ``ar-eager``, ``hf``, ``hf-static`` or ``hf-pld``) — the ratio a speed
  claim is made with.
- ``speedup_vs_ar`` / ``speedup_vs_hf``: tokens_per_s / that of ``ar`` (our engine, no draft) /
  ``hf`` (HF generate); null when that method did not run.
- ``tau``: total new tokens / total target forward passes (prefill pass included), i.e.
  accepted tokens per target pass with the bonus token; 1.0 for ``ar``; null for HF methods.
- ``tau_rounds``: mean over verification rounds of (accepted draft tokens + 1), prefill excluded.
- ``acceptance_by_depth``: α_d = P(the depth-d draft token is accepted | depth d-1 was accepted),
  over all rounds of all prompts whose tree reached depth d (``acceptance_rounds_by_depth`` = the
  number of such rounds, the denominator).
- ``accept_length_histogram``: counts[a] = rounds that accepted exactly a draft tokens.
- ``exact_match``: at temperature 0, the fraction of prompt turns whose output token ids equal
  ``ar``'s exactly (null at temperature > 0 or without ``ar``); records carry ``first_mismatch``.
- ``peak_memory_bytes``: on CUDA, the largest ``torch.cuda.max_memory_allocated`` over the
  method's calls, the peak statistics being reset before every call (weights included);
  ``peak_memory_over_baseline_bytes`` subtracts the memory allocated just before the call.
  Null on CPU.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from beagle.files import atomic_file, destination_path

logger = logging.getLogger(__name__)

RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
ACCEPTANCE_PNG = "acceptance_by_depth.png"
CATEGORY_PNG = "speedup_by_category.png"
ACCEPT_LENGTH_PNG = "accept_length_histogram.png"


def write_results(results: dict, out_dir, plots: bool = True) -> dict[str, Path]:
    """Write results.json, results.md and (with ``plots``) the PNGs; returns {kind: path}."""
    out_dir = destination_path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {"json": out_dir / RESULTS_JSON, "markdown": out_dir / RESULTS_MD}
    if plots:
        from beagle.bench import plots as plotting

        for key, name, function in (
            ("acceptance_plot", ACCEPTANCE_PNG, plotting.plot_acceptance_by_depth),
            ("category_plot", CATEGORY_PNG, plotting.plot_speedup_by_category),
            ("accept_length_plot", ACCEPT_LENGTH_PNG, plotting.plot_accept_length_histogram),
        ):
            try:
                if function(results, out_dir / name) is not None:
                    paths[key] = out_dir / name
            except Exception as error:  # a plot must never lose the measurements
                logger.warning("could not draw %s: %s", name, error)
    results["outputs"] = {key: str(path) for key, path in paths.items()}
    _atomic_write(paths["markdown"], markdown_report(results))
    _atomic_write(paths["json"], json.dumps(results, indent=1, default=str) + "\n")
    logger.info("wrote %s", ", ".join(str(p) for p in paths.values()))
    return paths


def _atomic_write(path: Path, text: str) -> None:
    with atomic_file(path) as temporary:
        temporary.write_text(text, encoding="utf-8")


# ------------------------------------------------------------ formatting
def _number(value, digits: int = 2, suffix: str = "") -> str:
    return "—" if value is None else f"{value:.{digits}f}{suffix}"


def format_memory(value) -> str:
    if value is None:
        return "n/a"
    mib = value / 2**20
    return f"{mib / 1024:.2f} GiB" if mib >= 1024 else f"{mib:.1f} MiB"


def markdown_table(results: dict) -> str:
    """The main table: method, tokens/s, speedup vs the best plain method, vs AR, vs HF, τ, exact match,
    peak memory."""
    summary = results["summary"]
    best = next((m.get("best_plain") for m in summary.values() if m.get("best_plain")), None)
    lines = [
        f"| method | tokens/s | vs best plain ({best or '—'}) | speedup vs AR | speedup vs HF | τ | exact match | peak mem |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, m in summary.items():
        lines.append(
            f"| {name} | {_number(m['tokens_per_s'], 1)} | {_number(m.get('speedup_vs_best_plain'), 2, '×')} | "
            f"{_number(m['speedup_vs_ar'], 2, '×')} | "
            f"{_number(m['speedup_vs_hf'], 2, '×')} | {_number(m['tau'], 2)} | {_number(m.get('exact_match'), 2)} | "
            f"{format_memory(m.get('peak_memory_bytes'))} |"
        )
    return "\n".join(lines)


def category_table(results: dict, key: str = "speedup_vs_best_plain") -> str:
    """Per-category ``key`` (default: speedup vs the run's fastest plain method) for every method; ''
    without categories."""
    categories = results.get("by_category", {})
    if not categories:
        return ""
    names = list(results["summary"])
    lines = ["| category | turns | " + " | ".join(names) + " |", "|---|---:|" + "---:|" * len(names)]
    for category, per_method in categories.items():
        samples = max((m["samples"] for m in per_method.values()), default=0)
        cells = [_number(per_method[name].get(key), 2, "×" if key.startswith("speedup") else "") for name in names]
        lines.append(f"| {category} | {samples} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def acceptance_table(results: dict) -> str:
    rows = {name: m for name, m in results["summary"].items() if m.get("acceptance_by_depth") is not None}
    if not rows:
        return ""
    depth = max(len(m["acceptance_by_depth"]) for m in rows.values())
    lines = [
        "| method | " + " | ".join(f"α{d}" for d in range(1, depth + 1)) + " | mean accepted | τ (rounds) |",
        "|---|" + "---:|" * (depth + 2),
    ]
    for name, m in rows.items():
        rates = list(m["acceptance_by_depth"]) + [None] * (depth - len(m["acceptance_by_depth"]))
        lines.append(f"| {name} | " + " | ".join(_number(r, 3) for r in rates)
                     + f" | {_number(m['mean_accept_length'], 2)} | {_number(m['tau_rounds'], 2)} |")
    return "\n".join(lines)


def markdown_report(results: dict) -> str:
    env = results.get("environment", {})
    target = results.get("target", {})
    settings = results.get("settings", {})
    generation = settings.get("generation", {})
    tree = settings.get("tree", {})
    prompts = results.get("prompts", {})
    commit = env.get("git_commit")
    parts = [
        "# Beagle benchmark",
        "",
        f"- target: `{target.get('name')}` ({target.get('dtype')}) on {env.get('device_name')} ({env.get('device_type')})",
        f"- prompts: `{prompts.get('source') or 'given in code'}`: {prompts.get('count')} prompts, {prompts.get('timed_turns')} timed turns"
        + (f", {len(prompts.get('skipped', []))} skipped" if prompts.get("skipped") else "")
        + f"; categories: {', '.join(prompts.get('categories', []))}",
        f"- generation: max_new_tokens={generation.get('max_new_tokens')}, temperature={generation.get('temperature')}, "
        f"top_p={generation.get('top_p')}, top_k={generation.get('top_k')}, seed={generation.get('seed')}",
        f"- tree: depth={tree.get('depth')}, top_k={tree.get('top_k')}, total_tokens={tree.get('total_tokens')}; "
        f"warm-up tokens: {settings.get('warmup_tokens')}; HF prompt lookup tokens: {settings.get('pld_num_tokens')}",
        f"- torch {env.get('torch')}, transformers {env.get('transformers')}"
        + (f", CUDA {env.get('cuda')}" if env.get("cuda") else "")
        + (f", commit `{commit[:12]}`{' (dirty)' if env.get('git_dirty') else ''}" if commit else ""),
        f"- wall time: {results.get('wall_time_s', 0):.1f} s",
    ]
    if results.get("command"):
        parts.append(f"- command: `{results['command']}`")
    parts += ["", markdown_table(results), ""]
    parts.append("tokens/s = total new tokens / total timed seconds; speedups are ratios of tokens/s (\"vs best plain\": "
                 "against the fastest method without a draft in this run); τ = new tokens "
                 "per target pass; exact match = fraction of prompt turns whose tokens equal `ar`'s (temperature 0).")
    categories = category_table(results)
    if categories:
        parts += ["", "## Speedup vs the fastest plain method by category", "",
                  "Per category the fastest plain method may differ (`best_plain` in results.json).", "", categories]
    acceptance = acceptance_table(results)
    if acceptance:
        parts += ["", "## Acceptance by depth", "",
                  "α_d = P(depth-d draft token accepted | depth d-1 accepted), over all rounds of all prompts.", "",
                  acceptance]
    outputs = results.get("outputs", {})
    images = [(key, Path(path).name) for key, path in outputs.items() if str(path).endswith(".png")]
    if images:
        parts += ["", "## Plots", ""] + [f"![{key}]({name})" for key, name in images]
    return "\n".join(parts) + "\n"
