"""Static-shape decoding: eager vs fixed-shape target passes (CUDA graphs on a GPU), same process.

A random-weight target (--shape, bf16 on CUDA) and a random Beagle draft (so τ ≈ 1: this measures the
cost of passes, not acceptance). For AR and for speculative decoding, each with ``static`` off and on:
one warm-up generation (captures the graphs), then --repeats timed generations of --tokens new tokens
from the same --context-token prompt. Reports ms per target pass, tokens/s, and whether the static
path produced the eager path's tokens.

    PYTHONPATH=src python3 bench/gpu/static_decoding.py --out $OUT/static.json                 # GPU
    PYTHONPATH=src python3 bench/gpu/static_decoding.py --tiny --out /tmp/static.json          # CPU
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--shapes", default="smollm2:30,llama-3.1-8b:32", help="shape:layers,...")
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    from beagle.decoding.engine import SpeculativeGenerator
    from beagle.decoding.sampling import GenerationSettings
    from beagle.models.checkpoint import build_draft
    from random_models import random_target

    device = "cuda" if torch.cuda.is_available() else "cpu"
    shapes = [("tiny", 2)] if args.tiny else [(s.split(":")[0], int(s.split(":")[1])) for s in args.shapes.split(",")]
    settings = GenerationSettings(max_new_tokens=args.tokens, ignore_eos=True)
    rows = []
    for shape, layers in shapes:
        dtype = torch.float32 if shape == "tiny" else torch.bfloat16
        target = random_target(shape, layers, device, dtype)
        draft = build_draft(target, "beagle").to(dtype)
        prompt = torch.randint(0, target.vocab_size, (args.context,), generator=torch.Generator().manual_seed(0))
        outputs = {}
        for method, use_draft in (("ar", False), ("beagle", True)):
            for static in (False, True):
                generator = SpeculativeGenerator(target, draft if use_draft else None, static=static)
                generator.generate(prompt.tolist(), settings)  # warm-up (and graph capture)
                times, passes = [], []
                for _ in range(args.repeats):
                    output = generator.generate(prompt.tolist(), settings)
                    times.append(output.stats.time_total - output.stats.time_prefill)
                    passes.append(output.stats.target_passes - 1)
                name = f"{method}-{'static' if static else 'eager'}"
                outputs[name] = output.token_ids
                elapsed = statistics.median(times)
                row = {"shape": shape, "layers": layers, "method": name, "decode_s": round(elapsed, 4),
                       "tokens_per_s": round((args.tokens - 1) / elapsed, 1),
                       "ms_per_target_pass": round(1e3 * elapsed / max(1, passes[-1]), 2),
                       "tau": round(output.stats.tau, 3), "draft_s": round(output.stats.time_draft, 4),
                       "verify_s": round(output.stats.time_verify, 4)}
                rows.append(row)
                print(json.dumps(row), flush=True)
        for method in ("ar", "beagle"):
            same = outputs[f"{method}-eager"] == outputs[f"{method}-static"]
            rows.append({"shape": shape, "method": method, "static_tokens_equal_eager": same})
            print(json.dumps(rows[-1]), flush=True)
        del target, draft
        if device == "cuda":
            torch.cuda.empty_cache()
    report = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "torch": torch.__version__,
              "context": args.context, "tokens": args.tokens, "repeats": args.repeats, "rows": rows}
    Path(args.out).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
