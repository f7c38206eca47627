"""vLLM side by side with Beagle on one CPU machine (docs/vllm.md). Run with the vLLM environment's python
(`.ci/vllm` builds .venv-vllm), LD_PRELOAD=<venv>/lib/libiomp5.so, from the repository root.

  prompts     OUT.jsonl --limit N          first turns of N MT-Bench prompts (round-robin over categories),
                                          the file both `beagle bench --prompts` and `acceptance` read
  acceptance  PROMPTS --draft FOLDER ...   vLLM offline (LLM), chain of K draft tokens, greedy: acceptance
                                          length (1 + accepted / drafts), per-position counts, tokens/s
  load        PROMPTS --url URL --clients C [C ...]
                                          C concurrent OpenAI chat clients against a running server (vLLM's
                                          or `beagle serve`), each request one prompt: aggregate tokens/s
Results are printed as JSON lines (and appended to --json when given).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor


def _emit(record: dict, path: str | None) -> None:
    line = json.dumps(record)
    print(line, flush=True)
    if path:
        with open(path, "a") as sink:
            sink.write(line + "\n")


def cmd_prompts(args) -> None:
    from beagle.data.prompt_sets import load_prompts

    prompts = load_prompts("mt-bench", limit=args.limit)
    with open(args.out, "w") as sink:
        for prompt in prompts:
            sink.write(json.dumps({"id": prompt.id, "category": prompt.category, "prompt": prompt.turns[0]}) + "\n")
    print(f"wrote {len(prompts)} prompts to {args.out}")


def _read_prompts(path: str) -> list[dict]:
    with open(path) as source:
        return [json.loads(line) for line in source if line.strip()]


def cmd_acceptance(args) -> None:
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    from vllm import LLM, SamplingParams

    from beagle.assets.registry import fetch_asset

    target = args.target or str(fetch_asset("smollm2"))
    records = _read_prompts(args.prompts)
    for draft in args.draft:
        spec = None if draft == "none" else {"method": "eagle", "model": draft,
                                             "num_speculative_tokens": args.speculative_tokens}
        llm = LLM(model=target, dtype="float32", enforce_eager=True, max_model_len=2048, max_num_seqs=args.batch,
                  speculative_config=spec, seed=0, disable_log_stats=False, distributed_executor_backend="uni")
        tokenizer = llm.get_tokenizer()
        inputs = [{"prompt_token_ids": tokenizer.apply_chat_template(
            [{"role": "user", "content": record["prompt"]}], add_generation_prompt=True, tokenize=True,
            return_dict=False)} for record in records]
        params = SamplingParams(temperature=0.0, max_tokens=args.max_tokens)
        llm.generate(inputs[:1], SamplingParams(temperature=0.0, max_tokens=8), use_tqdm=False)  # warm-up
        before = _spec(llm)
        start = time.perf_counter()
        outputs = llm.generate(inputs, params, use_tqdm=False)
        seconds = time.perf_counter() - start
        after = _spec(llm)
        tokens = sum(len(output.outputs[0].token_ids) for output in outputs)
        delta = {key: _minus(after.get(key), before.get(key)) for key in after}
        drafts = delta.get("num_drafts") or 0
        _emit({"mode": "acceptance", "draft": draft, "prompts": len(records), "batch": args.batch,
               "max_tokens": args.max_tokens, "speculative_tokens": args.speculative_tokens,
               "new_tokens": tokens, "seconds": round(seconds, 2), "tokens_per_s": round(tokens / seconds, 2),
               "acceptance_length": round(1 + (delta.get("num_accepted_tokens") or 0) / drafts, 3) if drafts else None,
               "drafts": drafts, "accepted_per_position": delta.get("num_accepted_tokens_per_pos"),
               "outputs": [list(output.outputs[0].token_ids) for output in outputs] if args.keep_outputs else None},
              args.json)
        from vllm.distributed import cleanup_dist_env_and_memory

        llm.llm_engine.engine_core.shutdown()
        del llm
        cleanup_dist_env_and_memory()


def _minus(a, b):
    if isinstance(a, list):
        return [x - (y or 0) for x, y in zip(a, b or [0] * len(a))]
    return (a or 0) - (b or 0)


def _spec(llm) -> dict:
    values = {}
    for metric in llm.get_metrics():
        if metric.name.startswith("vllm:spec_decode_"):
            value = getattr(metric, "values", None)
            values[metric.name.removeprefix("vllm:spec_decode_")] = list(value) if value is not None else metric.value
    return values


def cmd_load(args) -> None:
    from openai import OpenAI

    records = _read_prompts(args.prompts)
    client = OpenAI(base_url=f"{args.url}/v1", api_key=args.api_key, max_retries=0, timeout=3600)
    model = client.models.list().data[0].id

    def ask(index: int) -> tuple[int, float]:
        started = time.perf_counter()
        reply = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": records[index % len(records)]["prompt"]}],
            max_tokens=args.max_tokens, temperature=0.0)
        return reply.usage.completion_tokens, time.perf_counter() - started

    ask(0)  # warm-up
    for clients in args.clients:
        requests = clients * args.rounds
        start = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            results = list(pool.map(ask, range(requests)))
        seconds = time.perf_counter() - start
        tokens = sum(count for count, _ in results)
        latencies = sorted(latency for _, latency in results)
        _emit({"mode": "load", "server": args.label, "clients": clients, "requests": requests,
               "completed": len(results), "completion_tokens": tokens, "seconds": round(seconds, 2),
               "tokens_per_s": round(tokens / seconds, 2),
               "latency_p50_s": round(latencies[len(latencies) // 2], 2), "latency_max_s": round(latencies[-1], 2)},
              args.json)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    prompts = sub.add_parser("prompts")
    prompts.add_argument("out")
    prompts.add_argument("--limit", type=int, default=8)
    prompts.set_defaults(func=cmd_prompts)
    acceptance = sub.add_parser("acceptance")
    acceptance.add_argument("prompts")
    acceptance.add_argument("--draft", action="append", required=True, help="exported folder, or none (repeatable)")
    acceptance.add_argument("--target", default=None)
    acceptance.add_argument("--max-tokens", type=int, default=128)
    acceptance.add_argument("--speculative-tokens", type=int, default=4)
    acceptance.add_argument("--batch", type=int, default=1, help="max_num_seqs (1 = one prompt at a time)")
    acceptance.add_argument("--keep-outputs", action="store_true")
    acceptance.add_argument("--json", default=None)
    acceptance.set_defaults(func=cmd_acceptance)
    load = sub.add_parser("load")
    load.add_argument("prompts")
    load.add_argument("--url", required=True)
    load.add_argument("--label", required=True)
    load.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    load.add_argument("--rounds", type=int, default=1, help="requests per client")
    load.add_argument("--max-tokens", type=int, default=128)
    load.add_argument("--api-key", default="unused")
    load.add_argument("--json", default=None)
    load.set_defaults(func=cmd_load)
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    sys.exit(main())
