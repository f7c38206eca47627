"""The fast path's attention alone: a few query tokens over the whole fixed-capacity cache with an additive mask.

`target_step.py` found PyTorch's memory-efficient SDPA kernel (what SDPA picks for a masked query) taking
53 µs per layer of SmolLM2's 2.9 ms AR step (30 layers: more than half the step) and 43 µs per layer of the
8B shape's: with one query token it parallelises over heads only and walks all capacity slots in one thread
block. This times, per shape, the candidates inside torch.compile and a CUDA graph (launch cost excluded,
as in the fast path), each call on fresh-looking inputs of the pass's shapes:

- ``efficient``: ``scaled_dot_product_attention(q, k, v, mask, enable_gqa=True)`` (what runs today);
- ``math``: the same call under ``sdpa_kernel(MATH)``: inductor decomposes it into matmuls and a fused softmax;
- ``manual``: grouped-query matmuls written out (q as [KV, group·T, hd]), float32 softmax, no copies of K/V.

and reports µs per call and the largest difference from a float32 reference.

    PYTHONPATH=src python3 bench/gpu/attention_decode.py --out $OUT/attention_decode.json      # GPU
    PYTHONPATH=src python3 bench/gpu/attention_decode.py --tiny --out /tmp/attention.json      # CPU smoke test
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

SHAPES = {"smollm2": (9, 3, 64), "llama-3.1-8b": (32, 8, 128), "tiny": (4, 2, 16)}  # heads, kv heads, head dim


def efficient(q, k, v, mask):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)


def math(q, k, v, mask):
    with sdpa_kernel([SDPBackend.MATH]):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)


def manual(q, k, v, mask):
    """q [1, H, T, hd], k/v [1, KV, C, hd], mask [1, 1, T, C] additive -> [1, H, T, hd]."""
    _, heads, count, size = q.shape
    groups = k.shape[1]
    grouped = q.reshape(groups, heads // groups * count, size)  # heads are grouped consecutively per KV head
    scores = torch.matmul(grouped, k[0].transpose(1, 2)).float() * size ** -0.5  # [KV, G·T, C]
    scores = scores.view(groups, heads // groups, count, -1) + mask[0, 0].float()
    weights = torch.softmax(scores, dim=-1).to(q.dtype).view(groups, heads // groups * count, -1)
    return torch.matmul(weights, v[0]).view(1, heads, count, size)


CANDIDATES = {"efficient": efficient, "math": math, "manual": manual}


def reference(q, k, v, mask):
    groups = q.shape[1] // k.shape[1]
    kk, vv = k.float().repeat_interleave(groups, 1), v.float().repeat_interleave(groups, 1)
    scores = q.float() @ kk.transpose(-1, -2) * q.shape[-1] ** -0.5 + mask.float()
    return torch.softmax(scores, -1) @ vv


def measure(name, function, inputs, gpu: bool, calls: int) -> float:
    compiled = torch.compile(function, dynamic=False, fullgraph=True, backend="inductor" if gpu else "eager")
    for _ in range(3):
        compiled(*inputs)
    if not gpu:
        started = time.perf_counter()
        for _ in range(calls):
            compiled(*inputs)
        return 1e6 * (time.perf_counter() - started) / calls
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        compiled(*inputs)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            compiled(*inputs)
    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(5):
        graph.replay()
    end.record()
    end.synchronize()
    return 1e3 * start.elapsed_time(end) / (5 * calls)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--shapes", default="smollm2,llama-3.1-8b")
    parser.add_argument("--tokens", default="1,61", help="query tokens per pass (AR step, tree verify)")
    parser.add_argument("--capacities", default="1024,4096")
    parser.add_argument("--calls", type=int, default=50, help="calls per captured graph")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    gpu = torch.cuda.is_available()
    device, dtype = ("cuda", torch.bfloat16) if gpu else ("cpu", torch.float32)
    shapes = ["tiny"] if args.tiny else args.shapes.split(",")
    capacities = [64] if args.tiny else [int(c) for c in args.capacities.split(",")]
    rows = []
    for shape in shapes:
        heads, kv_heads, size = SHAPES[shape]
        for count in (int(t) for t in args.tokens.split(",")):
            for capacity in capacities:
                generator = torch.Generator(device=device).manual_seed(0)
                q = torch.randn(1, heads, count, size, device=device, dtype=dtype, generator=generator)
                k = torch.randn(1, kv_heads, capacity, size, device=device, dtype=dtype, generator=generator)
                v = torch.randn(1, kv_heads, capacity, size, device=device, dtype=dtype, generator=generator)
                length = capacity // 2  # half the cache holds the sequence, the rest is hidden
                visible = torch.arange(capacity, device=device)[None] < length + torch.arange(count, device=device)[:, None]
                mask = torch.where(visible, 0.0, torch.finfo(dtype).min).to(dtype)[None, None]
                expected = reference(q, k, v, mask)
                row = {"shape": shape, "tokens": count, "capacity": capacity}
                for name, function in CANDIDATES.items():
                    try:
                        row[f"{name}_us"] = round(measure(name, function, (q, k, v, mask), gpu, args.calls if gpu else 3), 2)
                        row[f"{name}_max_error"] = float((function(q, k, v, mask).float() - expected).abs().max())
                    except Exception as error:  # one failing candidate must not lose the others
                        row[f"{name}_error"] = f"{type(error).__name__}: {str(error)[:300]}"
                rows.append(row)
                print(json.dumps(row), flush=True)
                Path(args.out).write_text(json.dumps({"device": torch.cuda.get_device_name() if gpu else "cpu",
                                                      "torch": torch.__version__, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
