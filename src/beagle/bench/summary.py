"""What a benchmark run reports beside the timings: metrics per method (:func:`summarize`, their meaning in
:mod:`beagle.bench.report`) and the machine and code it ran on (:func:`environment`)."""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from beagle.decoding.stats import DecodeStats

BASELINES = ("ar", "ar-eager", "hf", "hf-static", "hf-pld")  # the plain (draft-free) methods


def summarize(records: list[dict], names: Sequence[str], brief: bool = False) -> dict[str, dict]:
    """Metrics per method over ``records`` (see :mod:`beagle.bench.report` for their meaning)."""
    out: dict[str, dict] = {}
    for name in names:
        entries = [r["methods"][name] for r in records if name in r["methods"]]
        new_tokens = sum(e["new_tokens"] for e in entries)
        seconds = sum(e["time_s"] for e in entries)
        passes = [e["target_passes"] for e in entries if "target_passes" in e]
        metrics = {
            "samples": len(entries),
            "new_tokens": new_tokens,
            "time_s": seconds,
            "tokens_per_s": new_tokens / seconds if seconds > 0 else None,
            "tau": new_tokens / sum(passes) if passes and len(passes) == len(entries) and sum(passes) else None,
        }
        if not brief:
            accept = [a for e in entries for a in e.get("accept_lengths", [])]
            depths = [d for e in entries for d in e.get("tree_depths", [])]
            drafted = any("accept_lengths" in e for e in entries)
            stats = DecodeStats(accept_lengths=accept, tree_depths=depths)
            matches = [e["exact_match"] for e in entries if e.get("exact_match") is not None]
            peaks = [e["peak_memory_bytes"] for e in entries if e.get("peak_memory_bytes") is not None]
            over = [e["peak_memory_bytes"] - e["memory_baseline_bytes"] for e in entries
                    if e.get("peak_memory_bytes") is not None and e.get("memory_baseline_bytes") is not None]
            metrics.update({
                "target_passes": sum(passes) if passes else None,
                "rounds": len(accept) if drafted else None,
                "mean_accept_length": sum(accept) / len(accept) if accept else None,
                "tau_rounds": (sum(accept) / len(accept) + 1) if accept else None,
                "acceptance_by_depth": stats.acceptance_by_depth() if drafted else None,
                "acceptance_rounds_by_depth": _rounds_by_depth(accept, depths) if drafted else None,
                "accept_length_histogram": stats.accept_length_histogram() if drafted else None,
                "exact_match": sum(matches) / len(matches) if matches else None,
                "exact_match_count": sum(matches) if matches else None,
                "peak_memory_bytes": max(peaks) if peaks else None,
                "peak_memory_over_baseline_bytes": max(over) if over else None,
            })
        out[name] = metrics
    plain = {name: out[name]["tokens_per_s"] for name in out if name in BASELINES and out[name]["tokens_per_s"]}
    best_plain = max(plain, key=plain.get) if plain else None
    for name, metrics in out.items():
        for base in ("ar", "hf"):
            reference = out.get(base, {}).get("tokens_per_s")
            mine = metrics["tokens_per_s"]
            metrics[f"speedup_vs_{base}"] = mine / reference if reference and mine is not None else None
        metrics["best_plain"] = best_plain
        mine = metrics["tokens_per_s"]
        metrics["speedup_vs_best_plain"] = mine / plain[best_plain] if best_plain and mine is not None else None
    return out


def _rounds_by_depth(accept: list[int], depths: list[int]) -> list[int]:
    """Denominator of α_d: rounds whose tree reached depth d and that accepted d-1 tokens or more."""
    return [sum(1 for a, t in zip(accept, depths) if t >= d and a >= d - 1) for d in range(1, max(depths, default=0) + 1)]


# ----------------------------------------------------------- environment
def environment(device) -> dict:
    import transformers

    device = torch.device(device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = _cpu_name()
    commit, dirty = _git_state()
    return {
        "device_type": device.type,
        "device_name": name,
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "git_commit": commit,
        "git_dirty": dirty,
        "argv": list(sys.argv),
    }


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "cpu"


def _git_state() -> tuple[str | None, bool | None]:
    for folder in (Path(__file__).resolve().parent, Path.cwd()):
        try:
            commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True,
                                    timeout=10)
            if commit.returncode != 0:
                continue
            status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=folder,
                                    capture_output=True, text=True, timeout=10)
            dirty = bool(status.stdout.strip()) if status.returncode == 0 else None
            return commit.stdout.strip(), dirty
        except (OSError, subprocess.SubprocessError):
            continue
    return None, None
