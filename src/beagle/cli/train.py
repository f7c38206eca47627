"""``beagle train``: train a Beagle (or EAGLE-2 baseline) draft for a target."""

from __future__ import annotations

import argparse
import sys

PARAMETER_NOTE = """\
draft size (shared embedding and LM head excluded; see beagle.models.params.parameter_formula):
  beagle: q,k,v,o projections + SwiGLU MLP + 3 RMSNorms
          = d·H·hd + 2·d·KV·hd + H·hd·d + 3·d·I + 3·d       (≈ 202M for a LLaMA-2-7B target)
  eagle2: the same layer + fc(2d→d, bias) + 1 RMSNorm
          = d·H·hd + 2·d·KV·hd + H·hd·d + 3·d·I + 2d² + 2d   (≈ 236M for a LLaMA-2-7B target)
  (d hidden size, H heads, KV key/value heads, hd head dim, I MLP width, all the target's)

schedule: Beagle trains --epochs-stage1 epochs of multi-token prediction (inverse block mask, window
--window) then --epochs-stage2 epochs of training-time simulation (--sim-steps steps, constant memory).
EAGLE-2 trains the same total number of epochs with its own loss (EAGLE-3-style TTT with --ttt-steps).
Multi-GPU: launch with `torchrun --nproc-per-node N -m beagle.cli.main train ...` (data parallel; add
--fsdp target|draft|both when the target or the draft's training state does not fit on one GPU).
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a draft (Beagle or the EAGLE-2 baseline) for a target",
        description="Train a draft model on conversations (--data) or on precomputed target features (--features).",
        epilog=PARAMETER_NOTE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--target", required=True, help="HF model folder or hub id ('smollm2' = SmolLM2-135M-Instruct)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", help="conversations: ShareGPT or OpenAI messages, JSON list or JSONL "
                                       "('sharegpt' = the training split of the public ShareGPT dump, held-out conversations excluded)")
    source.add_argument("--features", help="a folder written by `beagle datagen`")
    parser.add_argument("--arch", choices=["beagle", "eagle2"], default="beagle")
    parser.add_argument("--out", required=True, help="output folder (draft checkpoint, trainer_state.pt, logs/)")
    parser.add_argument("--epochs-stage1", type=int, default=10, help="stage-1 epochs (default 10)")
    parser.add_argument("--epochs-stage2", type=int, default=10, help="stage-2 epochs (default 10; 0 = stage 1 only)")
    parser.add_argument("--window", type=int, default=5, help="stage-1 window k (default 5)")
    parser.add_argument("--sim-steps", type=int, default=4, help="stage-2 simulated steps s (default 4)")
    parser.add_argument("--stage2-window", type=int, default=None, help="stage-2 window (default: --sim-steps)")
    parser.add_argument("--ttt-steps", type=int, default=0, help="eagle2 only: EAGLE-3-style unrolled steps")
    parser.add_argument("--draft-kv-heads", type=int, default=None,
                        help="the draft's own number of key/value heads, a divisor of the target's attention heads "
                             "(default: the target's; Beagle's values are its only channel from the states)")
    parser.add_argument("--init-draft", default=None,
                        help="start from this draft's weights instead of a fresh initialisation (a checkpoint folder "
                             "or shipped name, of --arch): fine-tune it, e.g. on regenerated answers")
    parser.add_argument("--max-steps", type=int, default=None, help="stop after this many optimizer steps")
    parser.add_argument("--batch-size", type=int, default=16, help="global batch in sequences (default 16)")
    parser.add_argument("--micro-batch-size", type=int, default=None, help="per-GPU micro-batch (gradient accumulation)")
    parser.add_argument("--lr", type=float, default=3e-5)
    parser.add_argument("--warmup", type=int, default=2000, help="linear warm-up steps, then constant")
    parser.add_argument("--max-length", type=int, default=2048, help="truncate sequences to this many tokens")
    parser.add_argument("--loss-chunk", type=int, default=None,
                        help="compute the LM-head losses in checkpointed chunks of this many positions "
                             "(less GPU memory for large vocabularies, ~one extra LM-head product)")
    parser.add_argument("--draft-vocab", metavar="N|FILE", default=None,
                        help="propose from a draft vocabulary: N = the N most frequent assistant tokens of the "
                             "training data (EOS kept), or a file from `beagle vocab`; the CE is over it, against "
                             "the target's distribution restricted and renormalised, weighted by the target's "
                             "mass inside it (default: the target's full vocabulary)")
    parser.add_argument("--heldout", type=int, default=None,
                        help="held-out sequences for evaluation (default 2%%, ≤256; with --eval-data: all of it)")
    parser.add_argument("--eval-data", default=None,
                        help="evaluate on this data instead of a held-out split: conversations (as --data) or a "
                             "`beagle datagen` folder; all of --data / --features then trains")
    parser.add_argument("--eval-depth", type=int, default=5, help="draft positions measured each epoch (default 5)")
    parser.add_argument("--regenerate", action="store_true",
                        help="replace assistant turns by the target's own greedy answers (cached; see `beagle "
                             "regenerate` to make them once and reuse the file)")
    parser.add_argument("--regenerate-batch-size", type=int, default=None,
                        help="rows per generate call for --regenerate (default 256 on CUDA, 8 on CPU)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from --out/trainer_state.pt (the settings, data and target must be the saved "
                             "run's)")
    parser.add_argument("--resume-anyway", action="store_true",
                        help="--resume even when the data, settings or target differ from the saved run (warns)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the run already in --out (its draft, trainer_state.pt and logs/); without it "
                             "a non-empty --out is refused unless --resume")
    parser.add_argument("--fsdp", choices=["none", "draft", "target", "both"], default="none",
                        help="under torchrun: shard the draft (weights, gradients, AdamW state), the frozen target's "
                             "layers, or both over the ranks with FSDP2 instead of replicating them (default none)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    parser.add_argument("--dtype", default="auto", help="target dtype: auto (bf16 on CUDA, fp32 on CPU), bfloat16, float32")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--no-tensorboard", action="store_true", help="no TensorBoard logs")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import logging

    import torch

    from beagle.models.params import parameter_formula
    from beagle.training.trainer import TrainConfig, Trainer, setup_distributed

    config = TrainConfig(
        target=args.target, data=args.data, features=args.features, arch=args.arch, out=args.out,
        epochs_stage1=args.epochs_stage1, epochs_stage2=args.epochs_stage2, window=args.window,
        sim_steps=args.sim_steps, stage2_window=args.stage2_window, ttt_steps=args.ttt_steps,
        max_steps=args.max_steps, batch_size=args.batch_size, micro_batch_size=args.micro_batch_size, lr=args.lr,
        warmup=args.warmup, max_length=args.max_length, heldout_count=args.heldout, eval_depth=args.eval_depth,
        regenerate=args.regenerate, regenerate_batch_size=args.regenerate_batch_size,
        draft_kv_heads=args.draft_kv_heads, eval_data=args.eval_data, init_draft=args.init_draft, resume=args.resume,
        resume_anyway=args.resume_anyway, overwrite=args.overwrite, loss_chunk=args.loss_chunk,
        draft_vocab=args.draft_vocab, seed=args.seed,
        fsdp=args.fsdp, device=args.device, dtype=args.dtype,
        progress=not args.no_progress, tensorboard=not args.no_tensorboard,
    ).validate()
    dist, _ = setup_distributed(args.device, process_group=args.fsdp != "none")
    main = dist.is_main
    # Progress messages of the trainer (epoch results, checkpoints) are worth showing on the main rank.
    logging.getLogger("beagle.training").setLevel(logging.INFO if main else logging.WARNING)
    trainer = Trainer(config)  # loads the target (sharded with --fsdp target|both) and the data
    count = parameter_formula(trainer.draft.config)
    if main:
        print(f"{args.arch} draft for {args.target}: {count:,} parameters ({count / 1e6:.1f}M)", file=sys.stderr)
    if main and hasattr(trainer.dataset, "report"):
        print(f"data: {trainer.dataset.report.summary()}", file=sys.stderr)
    if main and trainer.draft.vocab is not None:
        print(f"draft vocabulary: {trainer.draft.vocab.describe()}", file=sys.stderr)
    try:
        out = trainer.run()
    finally:
        if dist.initialized and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    if main:
        last = trainer.progress.history[-1] if trainer.progress.history else None
        if last:
            rates = ", ".join(f"{rate:.3f}" for rate in last["acceptance"])
            print(f"held-out acceptance by position [{rates}], simulated tau {last['tau']:.2f}", file=sys.stderr)
        if trainer.peak_memory_gib:
            peaks = ", ".join(f"{value:.2f}" for value in trainer.peak_memory_gib)
            print(f"peak GPU memory by rank: {peaks} GiB", file=sys.stderr)
        print(f"draft written to {out} (step {trainer.progress.step})")
    return 0
