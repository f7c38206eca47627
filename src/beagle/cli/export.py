"""``beagle export --format vllm|beagle DRAFT OUT``: a draft in vLLM's layout, or re-saved in another dtype."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "export", help="write a draft for vLLM (--format vllm) or re-save it in another dtype (--format beagle)",
        description="vllm: EAGLE-2 drafts in vLLM's EAGLE layout, Beagle drafts for the beagle vLLM plugin "
                    "(docs/vllm.md). beagle: the same checkpoint, e.g. --dtype bfloat16. OUT is written "
                    "atomically (a temporary folder beside it, then a rename).")
    parser.add_argument("draft", help="draft checkpoint folder or a shipped draft name (smollm2-beagle, smollm2-eagle2)")
    parser.add_argument("out", help="output folder (must not exist or be empty, unless --overwrite)")
    parser.add_argument("--format", required=True, choices=["vllm", "beagle"])
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                        help="stored weights' dtype (default: float32 for vllm, the source's for beagle)")
    parser.add_argument("--target", default=None,
                        help="vllm: the target's folder or hub id to record in the config and print in the "
                             "`vllm serve` command ('smollm2' = the converted SmolLM2 folder; default: the name "
                             "the draft records)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from beagle.integrations.export import export_draft

    target = args.target
    if target == "smollm2":
        from beagle.assets.registry import model_dir

        target = str(model_dir())
    out = export_draft(args.draft, args.out, format=args.format, dtype=args.dtype, target=target,
                       overwrite=args.overwrite)
    print(f"wrote {out}")
    if args.format == "vllm":
        config = json.loads((Path(out) / "config.json").read_text())
        spec = {"method": "eagle", "model": str(Path(out).resolve()), "num_speculative_tokens": 4}
        print("serve it with (the beagle package installed in vLLM's environment registers the Beagle model):")
        print(f"  vllm serve {config['beagle_export']['target']} --speculative-config '{json.dumps(spec)}'")
    return 0
