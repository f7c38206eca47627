"""How `driver.py` runs things: commands (one, or several side by side, each with its log), steps done in this
process, and the bf16 export of a draft — or, with --dry-run, only prints what it would do.

Commands are printed as ``+ command`` (the interpreter shown as ``python3``) and in-process steps as ``# step``,
so a dry run is the recipe written out.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BEAGLE = [sys.executable, "-m", "beagle.cli.main"]  # the `beagle` CLI of this checkout (PYTHONPATH=src)


def shown(argv: list[str]) -> str:
    """The command as a person would type it: ``python3`` for this interpreter, paths in the checkout relative."""
    def part(value) -> str:
        text = str(value)
        return "python3" if text == sys.executable else text.removeprefix(f"{ROOT}/")
    return shlex.join([part(value) for value in argv])


class Runner:
    """Runs the recipe's commands from the repository root with PYTHONPATH=src (or prints them: ``dry_run``)."""

    def __init__(self, dry_run: bool = False, cache: str | None = None):
        self.dry_run = dry_run
        self.env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "PYTHONUNBUFFERED": "1"}
        if cache:
            self.env["BEAGLE_CACHE"] = cache
        self.started = time.time()

    def stamp(self, title: str) -> None:
        print(f"== {title} at {time.strftime('%H:%M:%S', time.gmtime())} UTC, +{time.time() - self.started:.0f} s",
              flush=True)

    def run(self, argv: list[str], log: Path | None = None, echo: bool = True, env: dict | None = None,
            capture: bool = False) -> subprocess.CompletedProcess | None:
        """Run one command and wait. ``log``: its output also goes there (``echo``: and to stdout, as tee);
        ``capture``: its stdout is returned instead of printed. None in a dry run."""
        print(f"+ {shown(argv)}" + (f"  > {log}" if log and not echo else ""), flush=True)
        if self.dry_run:
            return None
        full_env = {**self.env, **(env or {})}
        if capture:
            return subprocess.run(argv, cwd=ROOT, env=full_env, stdout=subprocess.PIPE, text=True)
        if log is None:
            return subprocess.run(argv, cwd=ROOT, env=full_env)
        Path(log).parent.mkdir(parents=True, exist_ok=True)
        with open(log, "w") as handle:
            process = subprocess.Popen(argv, cwd=ROOT, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                       text=True)
            for line in process.stdout:
                handle.write(line)
                if echo:
                    sys.stdout.write(line)
            process.wait()
        sys.stdout.flush()
        return subprocess.CompletedProcess(argv, process.returncode)

    def side_by_side(self, jobs: dict[str, list[str]], logs: dict[str, Path], timeout: int | None = None,
                     env: dict | None = None) -> dict[str, tuple[int, int]]:
        """Start every job at once (its output to its log), wait for all: name -> (exit status, seconds).
        ``timeout``: each is killed after that many seconds (coreutils timeout: status 124)."""
        limit = ["timeout", str(timeout)] if timeout else []
        for name, argv in jobs.items():
            print(f"+ {shown(limit + argv)}  > {logs[name]} &", flush=True)
        if self.dry_run:
            return {}
        processes = {}
        for name, argv in jobs.items():
            Path(logs[name]).parent.mkdir(parents=True, exist_ok=True)
            with open(logs[name], "w") as handle:
                processes[name] = (subprocess.Popen(limit + argv, cwd=ROOT, env={**self.env, **(env or {})},
                                                    stdout=handle, stderr=subprocess.STDOUT), time.time())
        return {name: (process.wait(), round(time.time() - begun)) for name, (process, begun) in processes.items()}

    def step(self, description: str, function, *args, **kwargs):
        """Do ``function(*args, **kwargs)`` in this process (printed as ``# description``); None in a dry run."""
        print(f"# {description}", flush=True)
        return None if self.dry_run else function(*args, **kwargs)


def export_draft(runner: Runner, source: Path, out: Path, record: dict | None = None) -> None:
    """A bf16 copy of the draft in ``source`` at ``out`` (the form drafts ship and travel in), with ``record`` added
    to its ``config.json`` training record (which run it came from).

    This is `beagle export --format beagle --dtype bfloat16 --overwrite SOURCE OUT`. Until that command is in this
    checkout (module beagle.cli.export), the same copy is made here with beagle.models.checkpoint."""
    if importlib.util.find_spec("beagle.cli.export") is not None:
        runner.run([*BEAGLE, "export", "--format", "beagle", "--dtype", "bfloat16", "--overwrite", str(source),
                    str(out)], echo=True)
    else:
        runner.step(f"export {source} -> {out} (bf16; `beagle export` is not in this checkout)", _save_bf16, source,
                    out)
    if record:
        runner.step(f"record {record} in {out}/config.json", _add_record, out, record)


def _save_bf16(source: Path, out: Path) -> None:
    import torch

    from beagle.models.checkpoint import load_draft, save_draft

    save_draft(load_draft(source, dtype=torch.float32), out, dtype=torch.bfloat16)


def _add_record(folder: Path, record: dict) -> None:
    path = Path(folder) / "config.json"
    config = json.loads(path.read_text())
    config.setdefault("training", {}).update(record)
    path.write_text(json.dumps(config, indent=2) + "\n")
