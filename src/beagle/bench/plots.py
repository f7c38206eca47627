"""PNG plots of benchmark results (matplotlib's Agg canvas; pyplot and the global backend are not touched).

Each function takes the results dict of :func:`~beagle.bench.harness.run_benchmark` and a path,
and returns the path, or None when there is nothing to draw (e.g. no draft methods).
"""

from __future__ import annotations

from pathlib import Path


def _figure(width: float = 7.0, height: float = 4.2):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=120)
    FigureCanvasAgg(figure)
    return figure


def _title(results: dict, what: str) -> str:
    target = results.get("target", {}).get("name", "")
    device = results.get("environment", {}).get("device_name", "")
    temperature = results.get("settings", {}).get("generation", {}).get("temperature")
    return f"{what}\n{target} · {device} · T={temperature}"


def plot_acceptance_by_depth(results: dict, path) -> Path | None:
    """α_d per depth, one line per draft method."""
    rows = {name: m["acceptance_by_depth"] for name, m in results["summary"].items() if m.get("acceptance_by_depth")}
    if not rows:
        return None
    figure = _figure()
    axes = figure.add_subplot()
    for name, rates in rows.items():
        depths = list(range(1, len(rates) + 1))
        axes.plot(depths, rates, marker="o", linestyle="--" if name.endswith("-noconcat") else "-", label=name)
    axes.set_xlabel("draft depth d")
    axes.set_ylabel("α_d = P(accept depth d | depth d-1 accepted)")
    axes.set_ylim(0, 1.02)
    axes.set_xticks(range(1, max(len(r) for r in rows.values()) + 1))
    axes.grid(alpha=0.3)
    axes.legend()
    axes.set_title(_title(results, "Acceptance by depth"), fontsize=9)
    figure.tight_layout()
    figure.savefig(path)
    return Path(path)


def plot_speedup_by_category(results: dict, path) -> Path | None:
    """Grouped bars: speedup vs the run's fastest plain method per category, one bar per method."""
    categories = results.get("by_category", {})
    if not categories:
        return None
    names = list(results["summary"])
    key = "speedup_vs_best_plain"
    baseline = next((m.get("best_plain") for m in results["summary"].values() if m.get("best_plain")), None)
    if baseline is None:
        return None
    shown = [name for name in names if name != baseline]
    if not shown:
        return None
    labels = list(categories) + ["all"]
    values = {name: [categories[c][name].get(key) or 0.0 for c in categories] + [results["summary"][name].get(key) or 0.0]
              for name in shown}
    figure = _figure(max(8.0, 2.5 + 0.3 * len(labels) * len(shown)), 4.5)
    axes = figure.add_subplot()
    width = 0.8 / len(shown)
    for offset, name in enumerate(shown):
        positions = [i - 0.4 + width * (offset + 0.5) for i in range(len(labels))]
        axes.bar(positions, values[name], width=width, label=name)
    axes.axhline(1.0, color="black", linewidth=0.8)
    axes.set_xticks(range(len(labels)))
    axes.set_xticklabels(labels, rotation=30, ha="right")
    axes.set_ylabel(f"speedup vs {baseline} (tokens/s ratio)")
    axes.grid(axis="y", alpha=0.3)
    axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    axes.set_title(_title(results, f"Speedup vs {baseline} by category"), fontsize=9)
    figure.tight_layout()
    figure.savefig(path)
    return Path(path)


def plot_accept_length_histogram(results: dict, path) -> Path | None:
    """Fraction of rounds accepting exactly a draft tokens, one bar group per draft method."""
    rows = {name: m["accept_length_histogram"] for name, m in results["summary"].items()
            if m.get("accept_length_histogram") and sum(m["accept_length_histogram"])}
    if not rows:
        return None
    longest = max(len(counts) for counts in rows.values())
    figure = _figure()
    axes = figure.add_subplot()
    width = 0.8 / len(rows)
    for offset, (name, counts) in enumerate(rows.items()):
        total = sum(counts)
        fractions = [c / total for c in counts] + [0.0] * (longest - len(counts))
        axes.bar([a - 0.4 + width * (offset + 0.5) for a in range(longest)], fractions, width=width, label=name)
    axes.set_xlabel("accepted draft tokens per round")
    axes.set_ylabel("fraction of rounds")
    axes.set_xticks(range(longest))
    axes.grid(axis="y", alpha=0.3)
    axes.legend(fontsize=8)
    axes.set_title(_title(results, "Accept length per round"), fontsize=9)
    figure.tight_layout()
    figure.savefig(path)
    return Path(path)
