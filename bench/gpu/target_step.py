"""Where the fast AR step's time goes on a random-weight target, and how close it runs to the HBM bandwidth.

For each variant (a process of its own, so that inductor settings do not leak): build the shape with random
bf16 weights, warm up our fast AR (compiled pass + CUDA graphs), time ``--tokens`` new tokens (ms per step,
median of ``--repeats``), then profile ``--profile-tokens`` more with ``torch.profiler``: the CUDA kernels by
total time (grouped into families: GEMM/GEMV, attention, norm, elementwise, copy/index, other), the busy time
per step and the idle time between kernels. The floor is the bytes a step must read (every decoder weight,
the LM head, the KV entries it attends over) at ``--bandwidth`` bytes/s.

Variants (``--variants``; each is ``name`` or ``name:key=value;key=value`` of ``torch._inductor.config``):
``default``, ``grouped`` (the fast path's grouped attention, ``load_target(fast_attention="grouped")``), ``cdt``
(coordinate-descent tuning, as gpt-fast turns on), ``graphs-only`` (no torch.compile).

    PYTHONPATH=src python3 bench/gpu/target_step.py --out $OUT/target_step.json                 # GPU
    PYTHONPATH=src python3 bench/gpu/target_step.py --tiny --out /tmp/target_step.json          # CPU smoke test
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fast_path import timed as wall

VARIANTS = {  # name -> (torch._inductor.config settings, or None: no torch.compile; the fast path's attention)
    "default": ({}, "sdpa"),
    "grouped": ({}, "grouped"),
    "cdt": ({"coordinate_descent_tuning": True}, "sdpa"),
    "graphs-only": (None, "sdpa"),  # the stock HF pass captured in CUDA graphs
}
FAMILIES = (  # (family, substrings of a kernel name), first match wins
    ("gemm", ("gemm", "gemv", "cutlass", "sm90_xmma", "cublas", "splitk", "matmul", "mm_")),
    ("attention", ("flash", "fmha", "attention", "sdpa", "efficient")),
    ("norm/rope/act (fused)", ("triton_per", "triton_red", "rsqrt", "norm")),
    ("elementwise (fused)", ("triton_poi", "elementwise", "vectorized", "unrolled")),
    ("copy/index", ("copy", "index", "scatter", "gather", "cat")),
)


def family(name: str) -> str:
    lowered = name.lower()
    return next((label for label, keys in FAMILIES if any(key in lowered for key in keys)), "other")


def step_bytes(target, context: int) -> int:
    """What one decoding step must read: decoder weights, the LM head, the KV cache entries it attends over."""
    model = target.model
    embed = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    weights = sum(p.numel() * p.element_size() for p in model.parameters() if p is not embed or p is head)
    if head is embed:
        weights += 0  # tied: counted once (read by the head, one row by the embedding)
    config = model.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    kv = 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim * context * embed.element_size()
    return weights + kv


def run_variant(args, name: str, settings: dict | None, attention: str) -> dict:
    from random_models import random_target

    from beagle.decoding.engine import SpeculativeGenerator
    from beagle.decoding.sampling import GenerationSettings
    from beagle.kernels.attention_backend import configure_attention

    device = "cuda" if torch.cuda.is_available() else "cpu"
    configure_attention(device)
    if settings:
        import torch._inductor.config as inductor_config

        for key, value in settings.items():
            setattr(inductor_config, key, value)
    shape, layers = args.shape
    dtype = torch.float32 if shape == "tiny" else torch.bfloat16
    target = random_target(shape, layers, device, dtype)
    target.fast_attention = attention
    gpu = device == "cuda"
    generator = SpeculativeGenerator(target, None, fast=True, compile=gpu and settings is not None, graphs=gpu)
    prompt = torch.randint(0, target.vocab_size, (args.context,), generator=torch.Generator().manual_seed(0)).tolist()
    timed = GenerationSettings(max_new_tokens=args.tokens, ignore_eos=True)
    started = time.perf_counter()
    generator.reserve(args.context, args.tokens)
    generator.generate(prompt, timed)
    warmup = time.perf_counter() - started
    one = GenerationSettings(max_new_tokens=1, ignore_eos=True)
    # a step = (a call of N tokens - a call of 1 token) / (N - 1): prefill and per-call costs cancel
    step_s = (wall(lambda: generator.generate(prompt, timed), args.repeats)
              - wall(lambda: generator.generate(prompt, one), args.repeats)) / max(1, args.tokens - 1)
    row = {"variant": name, "inductor": settings, "attention": attention, "shape": shape, "layers": layers, "context": args.context,
           "warmup_s": round(warmup, 1), "ms_per_step": round(1e3 * step_s, 3)}
    read = step_bytes(target, args.context + args.tokens // 2)
    row["bytes_per_step"] = read
    row["floor_ms"] = round(1e3 * read / args.bandwidth, 3)
    row["bandwidth_fraction"] = round(read / step_s / args.bandwidth, 3)
    if gpu and args.profile_tokens:
        row.update(profile(generator, prompt, args.profile_tokens))
    return row


def profile(generator, prompt, tokens: int) -> dict:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from beagle.decoding.sampling import GenerationSettings

    settings = GenerationSettings(max_new_tokens=tokens, ignore_eos=True)
    generator.generate(prompt, settings)
    torch.cuda.synchronize()
    with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        output = generator.generate(prompt, settings)
        torch.cuda.synchronize()
    steps = max(1, output.stats.target_passes - 1)
    kernels = [event for event in prof.events() if event.device_type == torch.autograd.DeviceType.CUDA]
    if not kernels:
        return {"profile": "no CUDA kernels recorded"}
    # the decode steps only: drop the prefill's kernels (the first pass, before the first sampled token)
    by_name: dict[str, list[float]] = {}
    for event in kernels:
        by_name.setdefault(event.name, []).append(event.device_time)
    total_us = sum(sum(times) for times in by_name.values())
    families: dict[str, float] = {}
    for kernel, times in by_name.items():
        families[family(kernel)] = families.get(family(kernel), 0.0) + sum(times)
    top = sorted(by_name.items(), key=lambda item: -sum(item[1]))[:25]
    starts = sorted((event.time_range.start, event.time_range.end) for event in kernels)
    span = starts[-1][1] - starts[0][0]
    return {
        "profiled_steps": steps,
        "kernels_per_step": round(len(kernels) / (steps + 1), 1),
        "kernel_us_per_step": round(total_us / (steps + 1), 1),
        "span_us_per_step": round(span / (steps + 1), 1),
        "families_us_per_step": {key: round(value / (steps + 1), 1) for key, value in
                                 sorted(families.items(), key=lambda item: -item[1])},
        "top_kernels": [{"name": kernel[:120], "calls_per_step": round(len(times) / (steps + 1), 2),
                         "us_per_step": round(sum(times) / (steps + 1), 1),
                         "us_per_call": round(sum(times) / len(times), 2)} for kernel, times in top],
    }


def parse_variant(text: str) -> tuple[str, dict | None, str]:
    """(name, inductor settings, attention) of ``name`` or ``name:key=value;...`` (inductor settings on top of
    the named variant's, or of the default's for a new name)."""
    name, _, rest = text.partition(":")
    if not rest and name not in VARIANTS:
        raise SystemExit(f"unknown variant {name!r} (known: {', '.join(VARIANTS)}, or name:key=value;...)")
    settings, attention = VARIANTS.get(name, VARIANTS["default"])
    settings = None if settings is None else dict(settings)
    for item in filter(None, rest.split(";")):
        key, _, value = item.partition("=")
        settings = settings or {}
        settings[key] = json.loads(value) if value else True
    return name, settings, attention


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="CPU smoke test on a tiny shape")
    parser.add_argument("--shape", default="llama-3.1-8b:32", help="shape:layers (random_models.SHAPES)")
    parser.add_argument("--variants", default="default,grouped")
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--profile-tokens", type=int, default=16)
    parser.add_argument("--bandwidth", type=float, default=4.8e12, help="HBM bytes/s (H200: 4.8e12)")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # a variant, in this process
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    if args.tiny:
        args.shape, args.context, args.tokens, args.repeats, args.profile_tokens = "tiny:2", 32, 8, 1, 0
    shape, layers = args.shape.split(":")
    args.shape = (shape, int(layers))
    if args.one is not None:
        print(json.dumps(run_variant(args, *parse_variant(args.one))), flush=True)
        return
    rows = []
    report = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
              "torch": torch.__version__, "bandwidth_bytes_per_s": args.bandwidth, "rows": rows}
    for text in args.variants.split(","):
        command = [sys.executable, __file__, "--one", text, "--out", args.out, "--shape", ":".join(map(str, args.shape)),
                   "--context", str(args.context), "--tokens", str(args.tokens), "--repeats", str(args.repeats),
                   "--profile-tokens", str(args.profile_tokens), "--bandwidth", str(args.bandwidth)]
        done = subprocess.run(command, check=False, capture_output=True, text=True)
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        if done.returncode != 0 or not lines:
            rows.append({"variant": text, "error": done.stderr[-2000:]})
        else:
            rows.append(json.loads(lines[-1]))
        print(json.dumps(rows[-1]), flush=True)
        Path(args.out).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
