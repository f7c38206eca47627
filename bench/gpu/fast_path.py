"""The fast path's cost on random-weight targets: AR step and speculative round, against HF's static cache.

Random weights (τ ≈ 1), so this measures what a pass and a round cost, not acceptance. Per shape, in one
process, each method after an untimed warm-up (which pays compilation and graph capture, reported):

- ``ar-eager``, ``ar-graphs`` (fast path, no torch.compile), ``ar-fast`` (compiled + graphs), ``hf-static``
  (``generate(cache_implementation="static")``, transformers' own compile): ms per new token;
- ``beagle-eager``, ``beagle-fast``, ``eagle2-fast``: ms per round, and the fast round split into phases with
  CUDA events (``FastState.profile_round``: draft / verify / accept / commit / host), in units of one
  ``ar-fast`` step;
- fp32 check on the first shape: the fast path's tokens equal the eager path's (AR and Beagle).

    PYTHONPATH=src python3 bench/gpu/fast_path.py --out $OUT/fast_path.json               # GPU
    PYTHONPATH=src python3 bench/gpu/fast_path.py --tiny --out /tmp/fast_path.json        # CPU smoke test
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def timed(function, repeats: int) -> float:
    """Median seconds of ``function()`` (synchronised around each call)."""
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        started = time.perf_counter()
        function()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def hf_static(target, prompt: list[int], tokens: int):
    model = target.model
    ids = torch.tensor([prompt], device=target.device)

    def run():
        with torch.no_grad():
            return model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=tokens,
                                  min_new_tokens=tokens, do_sample=False, cache_implementation="static",
                                  pad_token_id=0)

    return run


def measure_shape(shape: str, layers: int, args, device: str, rows: list) -> None:
    from beagle.decoding.engine import SpeculativeGenerator
    from beagle.decoding.sampling import GenerationSettings
    from beagle.models.checkpoint import build_draft
    from random_models import random_target

    dtype = torch.float32 if shape == "tiny" else torch.bfloat16
    target = random_target(shape, layers, device, dtype)
    target.fast_attention = args.fast_attention
    drafts = {arch: build_draft(target, arch).to(dtype) for arch in ("beagle", "eagle2")}
    prompt = torch.randint(0, target.vocab_size, (args.context,), generator=torch.Generator().manual_seed(0)).tolist()
    settings = GenerationSettings(max_new_tokens=args.tokens, ignore_eos=True)
    gpu = device == "cuda"
    methods = {  # ordered so that one compiled instance serves every compiled method
        "ar-eager": dict(draft=None, fast=False),
        "beagle-eager": dict(draft="beagle", fast=False),
        "ar-graphs": dict(draft=None, fast=True, compile=False),
        "beagle-graphs": dict(draft="beagle", fast=True, compile=False),
        "ar-fast": dict(draft=None, fast=True),
        "beagle-fast": dict(draft="beagle", fast=True),
        "eagle2-fast": dict(draft="eagle2", fast=True),
        "ar-fast-t1": dict(draft=None, fast=True, temperature=1.0),  # the one sampling graph
        "beagle-fast-t1": dict(draft="beagle", fast=True, temperature=1.0),
    }
    chosen = methods if args.methods is None else {name: methods[name] for name in args.methods.split(",")}
    per_pass = {}
    for name, options in chosen.items():
        try:
            per_pass[name] = measure_method(name, options, target, drafts, prompt, settings, args, device, shape,
                                            layers, rows)
        except Exception as error:  # one failing method must not lose the others' numbers
            rows.append({"shape": shape, "method": name, "error": f"{type(error).__name__}: {error}"})
            print(json.dumps(rows[-1]), flush=True)
            import traceback

            traceback.print_exc()
    if gpu and args.hf:
        try:
            measure_hf(target, prompt, args, shape, layers, rows)
        except Exception as error:
            rows.append({"shape": shape, "method": "hf-static", "error": f"{type(error).__name__}: {error}"})
            print(json.dumps(rows[-1]), flush=True)
    if "ar-fast" in per_pass:
        unit = per_pass["ar-fast"]
        summary = {"shape": shape, "unit": "ar-fast ms per step", "ar_fast_ms": round(unit, 3)}
        for name in ("beagle-eager", "beagle-graphs", "beagle-fast", "eagle2-fast", "beagle-fast-t1"):
            if name in per_pass:
                summary[f"{name}_round_in_ar_steps"] = round(per_pass[name] / unit, 2)
        if "ar-fast-t1" in per_pass:
            summary["ar_fast_t1_ms"] = round(per_pass["ar-fast-t1"], 3)
        for name in ("beagle-fast", "eagle2-fast", "beagle-fast-t1"):
            row = next((r for r in rows if r.get("method") == name and r["shape"] == shape and "phases_ms" in r), None)
            if row:
                summary[f"{name}_phases_in_ar_steps"] = {k: round(v / unit, 2) for k, v in row["phases_ms"].items()}
        rows.append(summary)
        print(json.dumps(summary), flush=True)
    del target, drafts
    if gpu:
        torch.cuda.empty_cache()


def measure_method(name, options, target, drafts, prompt, settings, args, device, shape, layers, rows) -> float:
    """Warm up, time, and (fast speculative on a GPU) profile one method; returns ms per target pass."""
    from beagle.decoding.engine import SpeculativeGenerator
    from beagle.decoding.sampling import GenerationSettings

    gpu = device == "cuda"
    options = dict(options)
    draft = drafts.get(options.pop("draft"))
    temperature = options.pop("temperature", 0.0)
    if temperature:
        settings = GenerationSettings(max_new_tokens=settings.max_new_tokens, ignore_eos=True,
                                      temperature=temperature, seed=0)
    if not gpu:
        options["compile"] = False
    generator = SpeculativeGenerator(target, draft, **options)
    started = time.perf_counter()
    generator.generate(prompt, settings)  # warm-up: compiles and captures
    warmup = time.perf_counter() - started
    outputs = []
    seconds = timed(lambda: outputs.append(generator.generate(prompt, settings)), args.repeats)
    stats = outputs[-1].stats
    passes = stats.target_passes - 1
    decode = seconds - stats.time_prefill
    ms_per_pass = 1e3 * decode / max(1, passes)
    row = {"shape": shape, "layers": layers, "method": name, "ms_per_pass": round(ms_per_pass, 3),
           "tokens_per_s": round(args.tokens / seconds, 1), "tau": round(stats.tau, 3),
           "warmup_s": round(warmup, 1), "compile_and_capture_s": round(generator.warmup_seconds, 1)}
    if gpu and generator.fast and generator.graphs and draft is not None:
        state = generator._fast_state
        rng = None if settings.greedy else torch.Generator(device=device).manual_seed(0)
        state.prefill(torch.tensor(prompt, device=device), settings, rng)
        profiles = [state.profile_round(settings, rng) for _ in range(args.profile_rounds)]
        row["phases_ms"] = {key: round(statistics.median(p[key] for p in profiles), 3) for key in profiles[0]}
    rows.append(row)
    print(json.dumps(row), flush=True)
    return ms_per_pass


def measure_hf(target, prompt, args, shape, layers, rows) -> None:
    run = hf_static(target, prompt, args.tokens)
    started = time.perf_counter()
    run()
    run()  # transformers compiles the step on the first calls
    warmup = time.perf_counter() - started
    seconds = timed(run, args.repeats)
    rows.append({"shape": shape, "layers": layers, "method": "hf-static",
                 "ms_per_token": round(1e3 * seconds / args.tokens, 3),
                 "tokens_per_s": round(args.tokens / seconds, 1), "warmup_s": round(warmup, 1),
                 "note": "includes its prefill; ms_per_pass of ours excludes prefill"})
    print(json.dumps(rows[-1]), flush=True)


def fp32_check(shape: str, layers: int, device: str, rows: list, fast_attention: str = "sdpa") -> None:
    """The fast path's tokens equal the eager path's in fp32 (AR and Beagle; random weights; the fast path
    with ``fast_attention``)."""
    from beagle.decoding.engine import SpeculativeGenerator
    from beagle.decoding.sampling import GenerationSettings
    from beagle.models.checkpoint import build_draft
    from random_models import random_target

    target = random_target(shape, layers, device, torch.float32)
    target.fast_attention = fast_attention
    draft = build_draft(target, "beagle").float()
    prompt = torch.randint(0, target.vocab_size, (100,), generator=torch.Generator().manual_seed(1)).tolist()
    settings = GenerationSettings(max_new_tokens=48, ignore_eos=True)
    eager = SpeculativeGenerator(target, fast=False).generate(prompt, settings).token_ids
    for name, draft_or_none in (("ar", None), ("beagle", draft)):
        fast = SpeculativeGenerator(target, draft_or_none, fast=True).generate(prompt, settings).token_ids
        rows.append({"shape": shape, "check": f"fp32 {name} fast ({fast_attention}) == eager AR", "equal": fast == eager})
        print(json.dumps(rows[-1]), flush=True)
    del target, draft


def stall_check(shape: str, layers: int, device: str, rows: list, context: int) -> None:
    """No compile or capture after warm-up: ``reserve()`` for the whole context, then time requests a server
    meets (a long prompt, new sampling settings, the context limit); each is timed twice, so a stall shows as a
    first call much slower than the second."""
    from beagle.decoding.engine import SpeculativeGenerator
    from beagle.decoding.sampling import GenerationSettings
    from beagle.models.checkpoint import build_draft
    from random_models import random_target

    target = random_target(shape, layers, device, torch.bfloat16)
    draft = build_draft(target, "beagle").to(torch.bfloat16)
    generator = SpeculativeGenerator(target, draft, fast=True)
    started = time.perf_counter()
    generator.reserve(context - 64, 64)
    rows.append({"shape": shape, "check": "reserve", "context": context, "seconds": round(time.perf_counter() - started, 1),
                 "compile_and_capture_s": round(generator.warmup_seconds, 1)})
    print(json.dumps(rows[-1]), flush=True)
    requests = {
        "short greedy": (64, dict()),
        "long prompt greedy": (context - 200, dict()),
        "T=0.7 top-p 0.9": (300, dict(temperature=0.7, top_p=0.9)),
        "T=1.3 top-k 50": (300, dict(temperature=1.3, top_k=50)),
        "context limit": (context - 70, dict(temperature=1.0)),
    }
    for name, (length, extra) in requests.items():
        prompt = torch.randint(0, target.vocab_size, (length,), generator=torch.Generator().manual_seed(length)).tolist()
        settings = GenerationSettings(max_new_tokens=64, ignore_eos=True, seed=0, **extra)
        times = []
        for _ in range(2):
            times.append(timed(lambda: generator.generate(prompt, settings), 1))
        rows.append({"shape": shape, "check": f"after warm-up: {name}", "prompt": length,
                     "first_s": round(times[0], 3), "second_s": round(times[1], 3),
                     "compile_and_capture_s": round(generator.warmup_seconds, 1)})
        print(json.dumps(rows[-1]), flush=True)
    del target, draft, generator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="CPU smoke test on a tiny shape")
    parser.add_argument("--shapes", default="smollm2:30,llama-3.1-8b:32", help="shape:layers,...")
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--profile-rounds", type=int, default=20)
    parser.add_argument("--no-hf", dest="hf", action="store_false")
    parser.add_argument("--no-fp32-check", dest="fp32_check", action="store_false")
    parser.add_argument("--stall-check", type=int, default=0, metavar="CONTEXT",
                        help="after the shapes: reserve CONTEXT tokens on the first shape and time requests twice")
    parser.add_argument("--fast-attention", default="sdpa", choices=["sdpa", "grouped"],
                        help="the fast path's attention (beagle.kernels.fast_attention)")
    parser.add_argument("--methods", default=None, help="a comma-separated subset of the methods (default: all)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    from beagle.kernels.attention_backend import configure_attention

    device = "cuda" if torch.cuda.is_available() else "cpu"
    configure_attention(device)
    shapes = [("tiny", 2)] if args.tiny else [(s.split(":")[0], int(s.split(":")[1])) for s in args.shapes.split(",")]
    if args.tiny:
        args.context, args.tokens, args.repeats = 32, 16, 1
    import transformers

    rows: list[dict] = []
    report = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "torch": torch.__version__,
              "transformers": transformers.__version__, "fast_attention": args.fast_attention, "context": args.context, "tokens": args.tokens,
              "repeats": args.repeats, "rows": rows}
    if args.fp32_check:
        fp32_check(shapes[0][0], shapes[0][1], device, rows, args.fast_attention)
    for shape, layers in shapes:
        measure_shape(shape, layers, args, device, rows)
        Path(args.out).write_text(json.dumps(report, indent=2))  # after each shape: a cut run keeps its numbers
    if args.stall_check:
        stall_check(shapes[0][0], shapes[0][1], device, rows, 256 if args.tiny else args.stall_check)
    Path(args.out).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
