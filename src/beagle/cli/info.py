"""``beagle info DRAFT``: what a draft checkpoint is, its parameter count, draft vocabulary and training record."""

from __future__ import annotations

import argparse
import json


def register(subparsers) -> None:
    parser = subparsers.add_parser("info", help="describe a draft checkpoint (architecture, parameters, target)")
    parser.add_argument("draft", help="draft checkpoint folder or a shipped draft name (smollm2-beagle, smollm2-eagle2)")
    parser.add_argument("--json", action="store_true")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from beagle.cli.common import resolve_draft
    from beagle.models.checkpoint import load_draft
    from beagle.models.params import parameter_formula

    path = Path(resolve_draft(args.draft))
    draft = load_draft(path)
    config = draft.config
    info = {
        "path": str(path),
        "arch": config.arch,
        "parameters": draft.num_parameters(),
        "parameters_formula": parameter_formula(config),
        "hidden_size": config.hidden_size,
        "heads": config.num_attention_heads,
        "kv_heads": config.num_key_value_heads,
        "intermediate_size": config.intermediate_size,
        "target": config.target,
        "draft_vocab": _vocab_info(draft),
        "training": config.training,
    }
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{config.arch} draft at {path}")
    print(f"  parameters: {info['parameters']:,} (formula {info['parameters_formula']:,}; shared embedding/LM head excluded)")
    print(f"  width {config.hidden_size}, heads {config.num_attention_heads}/{config.num_key_value_heads} (q/kv), "
          f"MLP {config.intermediate_size}")
    target = dict(config.target or {})
    if "weights" in target:  # a fingerprint of the target's weights: its method, not its bytes
        target["weights"] = f"fingerprint ({target['weights'].get('method', '?')})"
    print(f"  target: {target}")
    if draft.vocab is None:
        print(f"  draft vocabulary: the target's full vocabulary ({config.vocab_size:,} tokens)")
    else:
        print(f"  draft vocabulary: {draft.vocab.describe()}")
    if config.training:
        print(f"  training: {json.dumps(config.training)[:400]}")
    return 0


def _vocab_info(draft) -> dict:
    """{"size", "coverage", "data", "tokens"}: the draft vocabulary, or the full one (coverage 1.0)."""
    vocab = draft.vocab
    if vocab is None:
        return {"size": draft.config.vocab_size, "full": True, "coverage": 1.0}
    return {"size": vocab.size, "full": False, "coverage": vocab.coverage, "data": vocab.data, "tokens": vocab.tokens}
