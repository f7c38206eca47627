"""Plot bench/gpu/train_memory.py results: peak step memory and step time vs simulated steps s.

    python bench/gpu/plot_memory.py docs/results/smollm2-h200/scale/train_memory_8b.json \
        docs/results/smollm2-h200/scale/train_memory_8b.png
"""

from __future__ import annotations

import json
import sys


def main(source: str, destination: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    report = json.load(open(source))
    labels = {"beagle-stage2": "Beagle stage 2 (simulation)", "eagle3-ttt": "EAGLE-3-style TTT"}
    figure, (memory, speed) = plt.subplots(1, 2, figsize=(9, 3.6))
    for method, label in labels.items():
        rows = [r for r in report["rows"] if r["method"] == method and "error" not in r]
        steps = [r["steps"] for r in rows]
        memory.plot(steps, [r["peak_over_baseline_gib"] for r in rows], marker="o", label=label)
        speed.plot(steps, [1000 * r["step_time_s"] for r in rows], marker="o", label=label)
    memory.set(xlabel="simulated / unrolled steps s", ylabel="peak memory of a step (GiB)",
               title="memory above weights + optimizer")
    speed.set(xlabel="simulated / unrolled steps s", ylabel="ms per optimizer step", title="step time")
    for axis in (memory, speed):
        axis.grid(alpha=0.3)
        axis.set_ylim(bottom=0)
    memory.legend()
    figure.suptitle(f"{report['target_shape'].split(' ')[0]}-shaped draft, {report['batch']}×{report['length']} tokens, "
                    f"{report['device']}", fontsize=10)
    figure.tight_layout()
    figure.savefig(destination, dpi=110)


if __name__ == "__main__":
    main(*sys.argv[1:3])
