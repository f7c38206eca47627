"""Multi-rank training check: data parallel and FSDP modes vs one process, through the `beagle train` CLI.

Builds a random Llama-shaped target (saved as an HF folder) and random pre-tokenized training data, then
runs `beagle train` for the same steps and global batch:

  single            python -m beagle.cli.main train ...                      (one process, one GPU)
  <mode> × N ranks  torchrun --nproc-per-node N -m beagle.cli.main train ... --fsdp <mode>
                    for mode in none (data parallel), draft, target, both

N = --nproc (default: every visible GPU; with one GPU the FSDP runs are single-rank smoke runs over NCCL).
Reports per run: wall time (start-up included), the training loop's time (evaluation and checkpoints
included), the held-out
loss and τ after the epoch, the peak GPU memory of every rank, and the largest weight difference from the
single-process draft (same data, same global batch: the runs should agree up to float reduction order).

    PYTHONPATH=src python3 bench/gpu/multi_gpu_train.py --out $OUT/multi_gpu                         # GPU
    PYTHONPATH=src python3 bench/gpu/multi_gpu_train.py --tiny --nproc 2 --out /tmp/multi_gpu   # CPU, gloo
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def write_target(folder: Path, shape: str, layers: int) -> None:
    from random_models import random_target

    if (folder / "config.json").is_file():
        return
    target = random_target(shape, layers, "cpu", torch.float32 if shape == "tiny" else torch.bfloat16)
    target.model.save_pretrained(folder)


def write_data(path: Path, vocab_size: int, count: int, length: int) -> None:
    """Random periodic token sequences (learnable) of length/4 .. length tokens (so batches differ in
    shape, as chat data does), 8 prompt tokens, the rest assistant tokens."""
    rng = random.Random(0)
    with path.open("w") as handle:
        for _ in range(count):
            period = [rng.randrange(vocab_size) for _ in range(rng.randint(3, 24))]
            size = rng.randint(max(16, length // 4), length)
            ids = (period * (size // len(period) + 1))[:size]
            handle.write(json.dumps({"input_ids": ids, "loss_mask": [0] * 8 + [1] * (size - 8)}) + "\n")


def run_training(name: str, launcher: list[str], common: list[str], out: Path, env: dict) -> dict:
    command = [*launcher, "-m", "beagle.cli.main", "train", *common, "--out", str(out / name)]
    if name.startswith("fsdp-"):
        command += ["--fsdp", name.removeprefix("fsdp-")]
    print("$", " ".join(command), flush=True)
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    (out / f"{name}.log").write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        print(result.stderr[-3000:], flush=True)
        return {"run": name, "ok": False, "returncode": result.returncode, "wall_s": wall}
    peak = re.search(r"peak GPU memory by rank: ([\d., ]+) GiB", result.stderr)
    loop = re.search(r"(\d+) steps in ([\d.]+) s", result.stderr)
    training = json.loads((out / name / "config.json").read_text())["training"]
    last = training["history"][-1] if training.get("history") else {}
    return {"run": name, "ok": True, "wall_s": round(wall, 1), "steps": training["step"],
            "loop_s": float(loop.group(2)) if loop else None,
            "peak_gpu_gib_by_rank": [float(v) for v in peak.group(1).split(",")] if peak else [],
            "heldout_loss": last.get("loss"), "tau": last.get("tau")}


def weight_difference(folder_a: Path, folder_b: Path) -> float:
    from safetensors.torch import load_file

    one, two = load_file(str(folder_a / "model.safetensors")), load_file(str(folder_b / "model.safetensors"))
    return max(float((one[name].float() - two[name].float()).abs().max()) for name in one)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--tiny", action="store_true", help="CPU smoke test: tiny target, gloo")
    parser.add_argument("--nproc", type=int, default=None, help="ranks (default: visible GPUs)")
    parser.add_argument("--shape", default="llama-3.1-8b")
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--micro-batch-size", type=int, default=4)
    parser.add_argument("--length", type=int, default=1024)
    parser.add_argument("--arch", default="beagle")
    parser.add_argument("--modes", default="none,draft,target,both", help="--fsdp modes under torchrun ('' = none)")
    args = parser.parse_args()
    if args.tiny:
        args.shape, args.layers, args.steps, args.length, args.batch_size, args.micro_batch_size = "tiny", 2, 4, 48, 4, 1
    nproc = args.nproc or max(1, torch.cuda.device_count())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(os.environ.get("TMPDIR", "/tmp")) / f"beagle-multi-gpu-{args.shape}-{args.layers}"
    work.mkdir(parents=True, exist_ok=True)
    write_target(work / "target", args.shape, args.layers)
    from random_models import SHAPES

    sequences = args.batch_size * args.steps // 2 + 4  # two epochs = the step budget; 4 held out
    write_data(work / "data.jsonl", SHAPES[args.shape]["vocab_size"], sequences, args.length)
    common = ["--target", str(work / "target"), "--data", str(work / "data.jsonl"), "--arch", args.arch,
              "--epochs-stage1", "1", "--epochs-stage2", "1", "--batch-size", str(args.batch_size),
              "--micro-batch-size", str(args.micro_batch_size), "--max-length", str(args.length),
              "--lr", "5e-4", "--warmup", "4", "--heldout", "4", "--no-progress", "--no-tensorboard"]
    if args.tiny:
        common += ["--device", "cpu", "--window", "3", "--sim-steps", "2", "--eval-depth", "2"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE.parents[1] / "src"),
                                                                      os.environ.get("PYTHONPATH")])),
           "NCCL_NVLS_ENABLE": "0", "OMP_NUM_THREADS": "1" if args.tiny else os.environ.get("OMP_NUM_THREADS", "4")}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc)]
    rows = [run_training("single", [sys.executable], common, out, env)]
    for mode in filter(None, args.modes.split(",")):
        rows.append(run_training(f"fsdp-{mode}", torchrun, common, out, env))
    for row in rows:
        if row["ok"] and rows[0]["ok"]:
                row["max_weight_diff_vs_single"] = weight_difference(out / "single", out / row["run"])
    report = {"device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu", "nproc": nproc,
              "gpus_visible": torch.cuda.device_count(), "torch": torch.__version__, "shape": args.shape,
              "layers": args.layers, "arch": args.arch, "steps": args.steps, "batch_size": args.batch_size,
              "micro_batch_size": args.micro_batch_size, "max_length": args.length,
              "cudnn_sdp": os.environ.get("BEAGLE_CUDNN_SDP", "0"), "rows": rows}
    (out / "multi_gpu_train.json").write_text(json.dumps(report, indent=2))
    for row in rows:
        print(json.dumps(row), flush=True)
    if not all(row["ok"] for row in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
