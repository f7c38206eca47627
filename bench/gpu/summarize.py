"""Headline table of a folder of `beagle bench` runs (one sub-folder per run, each with results.json).

    python bench/gpu/summarize.py docs/results/smollm2-h200/bench
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def rows(folder: Path):
    for path in sorted(folder.glob("*/results.json")):
        results = json.loads(path.read_text())
        prompts = results["prompts"]
        temperature = results["settings"]["generation"]["temperature"]
        for method, metrics in results["summary"].items():
            yield {
                "run": path.parent.name, "prompts": f"{prompts['source']} ({prompts['completed']}/{prompts['count']}, "
                f"{prompts['timed_turns']} turns)", "T": temperature, "method": method, **metrics,
            }


def fmt(value, pattern="{:.2f}", missing="—"):
    return missing if value is None else pattern.format(value)


def main(folder: str) -> None:
    print("| run | prompts (done/all) | T | method | tok/s | × AR | × HF | τ | exact = AR |")
    print("|---|---|---:|---|---:|---:|---:|---:|---:|")
    for row in rows(Path(folder)):
        print(f"| {row['run']} | {row['prompts']} | {row['T']:g} | {row['method']} | {row['tokens_per_s']:.1f} | "
              f"{fmt(row.get('speedup_vs_ar'), '{:.2f}×')} | {fmt(row.get('speedup_vs_hf'), '{:.2f}×')} | "
              f"{fmt(row.get('tau') if row['method'] not in ('ar', 'hf', 'hf-pld') else None)} | "
              f"{fmt(row.get('exact_match'))} |")


if __name__ == "__main__":
    main(sys.argv[1])
