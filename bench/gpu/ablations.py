"""The data and table steps of `driver.py ablations` / `retrain`: prepare the conversations, split the regenerated
file, summarise the runs, pick the best run of each architecture.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from variants import PAIRS, VARIANTS


def _read_jsonl(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _write_jsonl(path: Path, records) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")


def prepare(source: Path, train: int, heldout: int, work: Path) -> None:
    """The staged file holds the training conversations, then the held-out ones. Write the first HELDOUT
    held-out ones, then the first TRAIN training ones (held-out first: --time-budget cuts training ones only)."""
    records = _read_jsonl(Path(source))
    train_count, heldout_count = train, heldout
    if len(records) < train_count + heldout_count:
        raise SystemExit(f"{source} has {len(records)} records, fewer than {train_count} + {heldout_count}")
    chosen = records[train_count : train_count + heldout_count] + records[:train_count]
    work_dir = Path(work)
    work_dir.mkdir(parents=True, exist_ok=True)
    _write_jsonl(work_dir / "conversations.jsonl", chosen)
    (work_dir / "sources.json").write_text(json.dumps({"source": str(source), "heldout": heldout_count,
                                                       "train": train_count}) + "\n")
    print(f"{heldout_count} held-out + {train_count} training conversations -> {work_dir / 'conversations.jsonl'}")


def split(work: Path, ablation_train: int | None = None, fixed: bool = True) -> None:
    """Regenerated records with index < HELDOUT are held out. The ablation runs train on the first ABLATION_TRAIN
    regenerated training conversations (all when empty) -> regen-train; the fixed data = the source records of
    those conversations, with their original (ShareGPT) answers -> fixed-train; every regenerated training
    conversation -> regen-train-all (what `driver.py retrain` trains on)."""
    work_dir = Path(work)
    heldout = json.loads((work_dir / "sources.json").read_text())["heldout"]
    source = _read_jsonl(work_dir / "conversations.jsonl")
    regenerated = _read_jsonl(work_dir / "regenerated.jsonl")
    everything = [r for r in regenerated if r["index"] >= heldout]
    train = everything[:ablation_train] if ablation_train else everything
    _write_jsonl(work_dir / "regen-heldout.jsonl", [r for r in regenerated if r["index"] < heldout])
    _write_jsonl(work_dir / "regen-train.jsonl", train)
    _write_jsonl(work_dir / "regen-train-all.jsonl", everything)
    if fixed:  # the features for retrain alone need no fixed data
        _write_jsonl(work_dir / "fixed-train.jsonl", [source[r["index"]] for r in train])
    print(f"{len(everything)} regenerated training conversations, the ablations train on {len(train)} (and their "
          f"fixed originals), {len(regenerated) - len(everything)} held out")


def _final(config: dict) -> dict | None:
    history = config.get("training", {}).get("history") or []
    return history[-1] if history else None


def load_runs(work: Path, max_steps: int) -> list[dict]:
    rows = []
    status = {}  # status.txt: "name exit-code seconds" per finished process
    if (work / "status.txt").is_file():
        for line in (work / "status.txt").read_text().splitlines():
            name, code, seconds = line.split()
            status[name] = {"exit": int(code), "seconds": int(seconds)}
    for name, variant in VARIANTS.items():
        path = work / "runs" / name / "config.json"
        run_status = status.get(name)
        if run_status is None and not path.is_file():
            continue  # not trained in this call
        row = {"run": name, "arch": variant.arch, "data": variant.data, "change": variant.change, **(run_status or {})}
        if path.is_file():
            config = json.loads(path.read_text())
            final = _final(config)
            training = config.get("training", {})
            row.update(step=training.get("step"), epochs=(final or {}).get("epoch"),
                       tau=(final or {}).get("tau"), acceptance=(final or {}).get("acceptance"),
                       history=[{"epoch": e["epoch"], "step": e["step"], "stage": e["stage"], "tau": e["tau"]}
                                for e in training.get("history") or []])
            row["complete"] = training.get("step") == max_steps and final is not None and final["step"] == max_steps
        else:
            row["complete"] = False
        rows.append(row)
    return rows


def summarize(work: Path, max_steps: int, out: Path) -> None:
    work_dir, out_dir, steps = Path(work), Path(out), max_steps
    rows = load_runs(work_dir, steps)
    regen_report = work_dir / "regenerate-report.json"
    report = json.loads(regen_report.read_text()) if regen_report.is_file() else None
    by_name = {row["run"]: row for row in rows}
    pairs = []
    for question, run, reference in PAIRS:
        if run in by_name and reference in by_name and by_name[run].get("tau") and by_name[reference].get("tau"):
            pairs.append({"question": question, "run": run, "reference": reference,
                          "delta_tau": by_name[run]["tau"] - by_name[reference]["tau"]})
    summary = {"max_steps": steps, "runs": rows, "pairs": pairs, "regenerate": report,
               "sources": json.loads((work_dir / "sources.json").read_text())}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "ablations.json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = [
        f"# Ablations: drafts that match their target ({steps} steps of the same batch each)",
        "",
        "τ_sim: held-out simulated mean acceptance length (greedy chains, depth 5) on the same target-regenerated "
        "held-out conversations for every run (`--eval-data`), at the last evaluation (--max-steps unless the run "
        "is marked incomplete: cut by the time limit, it keeps its last epoch); epoch 1 ends at the same step for "
        "runs on the same data.",
        "",
        "| run | arch | data | differs from `beagle` | steps | τ_sim | acc@1..5 | τ_sim after epoch 1 (step) "
        "| wall s | exit |",
        "|---|---|---|---|---:|---:|---|---:|---:|---:|",
    ]
    for row in rows:
        acceptance = " ".join(f"{a:.2f}" for a in row.get("acceptance") or []) or "—"
        tau = f"{row['tau']:.3f}" if row.get("tau") is not None else "—"
        mark = "" if row["complete"] else " (incomplete)"
        first = next((e for e in row.get("history") or [] if e["epoch"] == 1), None)
        epoch1 = f"{first['tau']:.3f} ({first['step']})" if first else "—"
        lines.append(f"| {row['run']}{mark} | {row['arch']} | {row['data']} | {row['change']} | {row.get('step', '—')} "
                     f"| {tau} | {acceptance} | {epoch1} | {row.get('seconds', '—')} | {row.get('exit', '—')} |")
    lines += ["", "| question | Δτ_sim |", "|---|---:|"]
    lines += [f"| {p['question']} (`{p['run']}` − `{p['reference']}`) | {p['delta_tau']:+.3f} |" for p in pairs]
    if report:
        lines += ["", f"Regeneration: {report['written']} conversations written ({report['answers']} answers, "
                      f"{report['unfinished_answers']} stopped by the token limit), dropped {report['dropped']}, "
                      f"not started {report['not_started']}; {report['tokens_this_run']:,} new tokens in "
                      f"{report['seconds']:.0f} s = {report['tokens_per_s']:,.0f} tokens/s."]
    (out_dir / "ablations.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def best_runs(work_dir: Path, max_steps: int) -> dict[str, str]:
    """arch -> the run of that arch with the highest final τ_sim (complete runs first)."""
    rows = [row for row in load_runs(work_dir, max_steps) if row.get("tau") is not None]
    chosen = {}
    for arch in ("beagle", "eagle2"):
        mine = [row for row in rows if row["arch"] == arch]
        mine = [row for row in mine if row["complete"]] or mine
        if mine:
            chosen[arch] = max(mine, key=lambda row: row["tau"])["run"]
    return chosen
