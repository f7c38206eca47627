"""Training-memory claim: peak GPU memory and step time vs simulated steps s, Beagle vs EAGLE-3-style TTT.

Paper claim (§2.4): Beagle's stage-2 training-time simulation keeps memory flat in the number of
simulated steps s, while EAGLE-3's training-time test (TTT), which appends queries and keys per unrolled
step and keeps the whole graph, grows with s.

Setup (default --shape llama-3.1-8b): a Llama-3.1-8B-shaped target (hidden 4096, 32 heads, 8 KV heads, MLP 14336, vocab 128256) with
random weights, bf16; only its embedding and LM head matter here, so the target has one layer. Each
draft (Beagle ≈218M, EAGLE-2 ≈252M, fp32 weights) takes full optimizer steps (forward, backward,
AdamW) on random tokens and random "top states" of --length tokens, batch --batch. For s = 1..6:

  beagle-stage2  BeagleStage2(sim_steps=s, stage-2 window s)     (the trainer's stage-2 objective)
  eagle3-ttt     Eagle2Objective(ttt_steps=s)                    (EAGLE-3-style unrolled steps)

Reported per (method, s): peak CUDA memory allocated during a step minus what was allocated before it
(weights, optimizer state and inputs excluded), the absolute peak, and the median step time.
Also, on any device, the autograd saved-tensor peak (beagle.training.memory.peak_saved_tensor_bytes).

    PYTHONPATH=src python bench/gpu/train_memory.py --out $OUT/train_memory.json        # GPU
    PYTHONPATH=src python bench/gpu/train_memory.py --tiny --out /tmp/train_memory.json # CPU smoke test
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def build_target(shape: str, device: str):
    from random_models import random_target

    return random_target(shape, 1, device, torch.float32 if shape == "tiny" else torch.bfloat16)


def make_batch(target, batch: int, length: int, device: str):
    from beagle.models.objective import TrainBatch

    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(0, target.vocab_size, (batch, length), generator=generator)
    states = torch.randn(batch, length, target.hidden_size, generator=generator)
    return TrainBatch(
        input_ids=input_ids,
        attention_mask=torch.ones(batch, length, dtype=torch.bool),
        loss_mask=torch.ones(batch, length, dtype=torch.bool),
        lengths=torch.full((batch,), length, dtype=torch.long),
        states=states.to(torch.bfloat16),
        seeds=torch.arange(batch, dtype=torch.int64),
    ).to(device)


def measure(method: str, steps: int, target, batch, repeats: int, device: str, loss_chunk: int | None) -> dict:
    from beagle.models.checkpoint import build_draft
    from beagle.models.registry import make_objective
    from beagle.models.settings import ObjectiveSettings
    from beagle.training.memory import peak_saved_tensor_bytes

    torch.manual_seed(0)
    arch = "beagle" if method.startswith("beagle") else "eagle2"
    draft = build_draft(target, arch).to(device).train()
    parameters = [p for p in draft.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=1e-5, betas=(0.9, 0.95), fused=device == "cuda" or None)
    if method == "beagle-stage1":
        objective = make_objective("beagle", 1, ObjectiveSettings(loss_chunk=loss_chunk))
    elif arch == "beagle":
        settings = ObjectiveSettings(sim_steps=steps, stage2_window=steps, loss_chunk=loss_chunk)
        objective = make_objective("beagle", 2, settings)
    else:
        objective = make_objective("eagle2", 1, ObjectiveSettings(ttt_steps=steps, loss_chunk=loss_chunk))
    denominators = objective.counts(batch).double()

    def step():
        output = objective(draft, batch, denominators, backward=True)
        if output.loss is not None:
            output.loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 0.5)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    step()  # warm-up: allocates the optimizer state, so the measured steps see the steady state
    sync()
    times, peaks, bases = [], [], []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
            bases.append(torch.cuda.memory_allocated())
        sync()
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
        if device == "cuda":
            peaks.append(torch.cuda.max_memory_allocated())
    saved = peak_saved_tensor_bytes(lambda: objective(draft, batch, denominators, backward=True), exclude=parameters)
    optimizer.zero_grad(set_to_none=True)
    gib = 1024 ** 3
    result = {
        "method": method, "steps": steps,
        "step_time_s": statistics.median(times),
        "saved_tensors_peak_gib": saved / gib,
        "draft_parameters": sum(p.numel() for p in parameters),
    }
    if device == "cuda":
        result["peak_allocated_gib"] = max(peaks) / gib
        result["peak_over_baseline_gib"] = max(p - b for p, b in zip(peaks, bases)) / gib
    del draft, optimizer, parameters
    if device == "cuda":
        torch.cuda.empty_cache()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny shapes, CPU smoke test")
    parser.add_argument("--shape", choices=["llama-3.1-8b", "smollm2", "tiny"], default="llama-3.1-8b")
    parser.add_argument("--methods", default="beagle-stage2,eagle3-ttt",
                        help="comma-separated: beagle-stage1 (s ignored), beagle-stage2, eagle3-ttt")
    parser.add_argument("--max-steps", type=int, default=6)
    parser.add_argument("--length", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--loss-chunk", type=int, default=None)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    shape = "tiny" if args.tiny else args.shape
    length = 64 if args.tiny else args.length
    target = build_target(shape, device)
    batch = make_batch(target, args.batch, length, device)
    rows = []
    methods = args.methods.split(",")
    for steps in range(1, args.max_steps + 1):
        for method in methods:
            if method == "beagle-stage1" and steps > 1:
                continue
            try:
                row = measure(method, steps, target, batch, args.repeats, device, args.loss_chunk)
            except torch.OutOfMemoryError as error:  # report, keep going
                row = {"method": method, "steps": steps, "error": f"out of memory: {str(error)[:120]}"}
                torch.cuda.empty_cache()
            rows.append(row)
            print(json.dumps(row), flush=True)
    report = {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "torch": torch.__version__, "length": length, "batch": args.batch, "tiny": args.tiny,
        "target_shape": f"{shape} (random weights, 1 layer: only the embedding and LM head are used)",
        "rows": rows,
    }
    with open(args.out, "w") as handle:
        json.dump(report, handle, indent=2)


if __name__ == "__main__":
    main()
