"""Settings of a training run (:class:`TrainConfig`); ``beagle train`` builds its options from them.

A field with ``cli`` metadata (made by :func:`option`) is a ``beagle train`` option: ``--<name>`` (dashes
for underscores, or the ``flag`` given), typed from the field's annotation, with its help, choices and
metavar. Booleans are switches (``--resume``; ``negate`` makes ``--no-progress`` set ``progress=False``).
Fields without it are library settings (``train(TrainConfig(...))``), and ``--target`` / ``--dtype`` /
``--device`` are the shared :func:`beagle.cli.common.add_target_args`.

Nothing here names a draft architecture: the choices of ``--arch``, its default, each one's training
stages and the options only some architectures read come from :mod:`beagle.models.registry`.
This module imports no torch (``beagle train --help`` reads it); the checks that need torch import it in
:meth:`TrainConfig.validate`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from beagle.errors import BeagleError
from beagle.models import registry
from beagle.models.settings import ObjectiveSettings

FSDP_CHOICES = ("none", "draft", "target", "both")  # see beagle.training.distributed
LR_SCHEDULES = ("constant", "cosine", "linear")  # see beagle.training.schedule
# Options some architectures read (their registration's ``options``) and the values that leave them off:
# another architecture accepts those values and refuses the rest.
ARCHITECTURE_OPTIONS_UNSET = {"ttt_steps": (0, 1)}


def option(default, help: str | None = None, **cli):
    """A TrainConfig field that is a ``beagle train`` option. ``cli`` keywords: ``flag`` (instead of
    ``--<name>``), ``choices`` (a tuple), ``metavar``, ``required`` (on the command line only), ``group`` (a
    required mutually exclusive group of that name), ``negate`` (a ``--no-<name>`` switch for a bool)."""
    return field(default=default, metadata={"cli": {"help": help, **cli}})


@dataclass
class TrainConfig:
    """Settings of ``beagle train`` (defaults follow the paper, App. A.3)."""

    target: str | None = None  # HF folder / hub id (or pass a TargetModel to train())
    data: str | None = option(
        None, "conversations: ShareGPT or OpenAI messages, JSON list or JSONL ('sharegpt' = the training split "
        "of the public ShareGPT dump, held-out conversations excluded)", group="source")
    features: str | None = option(None, "a folder written by `beagle datagen`", group="source")
    arch: str = option(registry.default_name(), "draft architecture: " + "; ".join(
        f"{item.name} = {item.summary}" for item in registry.architectures()), choices=registry.names())
    out: str = option("runs/draft", "output folder (draft checkpoint, trainer_state.pt, logs/)", required=True)
    epochs_stage1: int = option(10, "stage-1 epochs (default 10)")
    epochs_stage2: int = option(10, "stage-2 epochs (default 10; 0 = stage 1 only)")
    window: int = option(5, "stage-1 window k (default 5)")
    sim_steps: int = option(4, "stage-2 simulated steps s (default 4)")
    stage2_window: int | None = option(None, "stage-2 window (default: --sim-steps)")
    ttt_steps: int = option(0, "EAGLE-3-style unrolled training-time-test steps (0/1 = one step)")
    draft_kv_heads: int | None = option(
        None, "the draft's own number of key/value heads, a divisor of the target's attention heads (default: "
        "the target's; with cross-attention the values are the draft's only channel from the states)")
    last_state_skip: bool = option(
        False, "Beagle beyond the paper: add W·norm(newest visible state) to the draft's residual (W starts at "
        "zero, so it also fine-tunes a draft trained without it, with --init-draft); a full-width path past the "
        "values' KV·hd dimensions")
    first_position_weight: float = option(
        1.0, "Beagle: the loss weight of window position 1 (next-token prediction) relative to the later ones, in "
        "both stages (default 1, the paper's: position 1 then carries 1/--window of stage 1's loss and "
        "--sim-steps/(1+...+--sim-steps) of stage 2's)")
    noise: str | None = option(
        None, "input noise on the target states in training: gaussian (Beagle's default), uniform (EAGLE-2's), "
        "none", choices=("gaussian", "uniform", "none"))
    noise_std: float = option(
        0.2, "the input noise's standard deviation (default 0.2; uniform noise is U(±√3·std), so the U(±0.1) of EAGLE's code "
        "at 512 tokens is --noise uniform --noise-std 0.0577)")
    init_draft: str | None = option(
        None, "start from this draft's weights instead of a fresh initialisation (a checkpoint folder or shipped "
        "name, of --arch): fine-tune it, e.g. on regenerated answers")
    max_steps: int | None = option(None, "stop after this many optimizer steps")
    batch_size: int = option(16, "global batch in sequences (default 16)")  # sequences per optimizer step
    micro_batch_size: int | None = option(None, "per-GPU micro-batch (gradient accumulation)")  # per rank
    lr: float = option(3e-5, "peak learning rate (default 3e-5)")
    warmup: int = option(2000, "linear warm-up steps (default 2000), then --lr-schedule")
    lr_schedule: str = option(
        "constant", "after warm-up: constant (default), or cosine / linear decay to --min-lr-ratio of the peak "
        "at the last planned step ((--epochs-stage1 + --epochs-stage2) × steps per epoch; --max-steps stops "
        "earlier without changing the curve)", choices=LR_SCHEDULES)
    min_lr_ratio: float = option(0.0, "the learning rate --lr-schedule cosine / linear decays to, as a fraction "
                                      "of --lr (default 0)")
    max_length: int = option(2048, "truncate sequences to this many tokens")
    loss_chunk: int | None = option(
        None, "compute the LM-head losses in checkpointed chunks of this many positions (less GPU memory for "
        "large vocabularies, ~one extra LM-head product)")
    # draft vocabulary: None (the target's full vocabulary), "N" (the N most frequent assistant tokens of the
    # training split, EOS ids kept) or a vocabulary file from `beagle vocab` (see beagle.vocab)
    draft_vocab: str | None = option(
        None, "propose from a draft vocabulary: N = the N most frequent assistant tokens of the training data "
        "(EOS kept), or a file from `beagle vocab`; the CE is over it, against the target's distribution "
        "restricted and renormalised, weighted by the target's mass inside it (default: the target's full "
        "vocabulary)", metavar="N|FILE")
    heldout_count: int | None = option(
        None, "held-out sequences for evaluation (default 2%%, ≤256; with --eval-data: all of it)",
        flag="--heldout")  # overrides heldout_fraction (0 = no evaluation)
    eval_data: str | None = option(
        None, "evaluate on this data instead of a held-out split: conversations (as --data) or a `beagle "
        "datagen` folder; all of --data / --features then trains")
    eval_depth: int = option(5, "draft positions measured each epoch (default 5)")
    eval_prompts: str | None = option(
        None, "also evaluate on a benchmark's own distribution: the target answers --eval-prompt-count prompts "
        "of mt-bench, humaneval, sharegpt-heldout or a prompt file greedily once (--eval-new-tokens each), and "
        "every evaluation measures the draft on those answers", metavar="SET|FILE")
    eval_prompt_count: int = option(40, "prompts of --eval-prompts (default 40)")
    eval_new_tokens: int = option(128, "tokens per --eval-prompts answer (default 128, as `beagle bench`)")
    eval_top_k: int = option(
        4, "also count a draft position as accepted when the target's token is among the draft's top-k there "
           "(the tree's view; reported as tau_top<k>; default 4)")
    keep_best: str | None = option(
        None, "keep the draft of the best evaluation so far in --out/best: tau (held-out τ_sim), prompts_tau "
        "(on --eval-prompts) or prompts_tau_topk (its top-k view)", choices=("tau", "prompts_tau", "prompts_tau_topk"))
    regenerate: bool = option(
        False, "replace assistant turns by the target's own greedy answers (cached; see `beagle regenerate` to "
        "make them once and reuse the file)")
    regenerate_batch_size: int | None = option(
        None, "rows per generate call for --regenerate (default 256 on CUDA, 8 on CPU)")
    resume: bool = option(False, "continue from --out/trainer_state.pt (the settings, data and target must be "
                                 "the saved run's)")
    resume_anyway: bool = option(False, "--resume even when the data, settings or target differ from the saved "
                                        "run (warns)")
    overwrite: bool = option(False, "replace the run already in --out (its draft, trainer_state.pt and logs/); "
                                    "without it a non-empty --out is refused unless --resume")
    fsdp: str = option(
        "none", "under torchrun: shard the draft (weights, gradients, AdamW state), the frozen target's layers, "
        "or both over the ranks with FSDP2 instead of replicating them (default none)", choices=FSDP_CHOICES)
    seed: int = option(0, "seed of the initial weights, the data order and the noise (default 0)")
    device: str | None = None
    dtype: str = "auto"  # target dtype (auto: bf16 on CUDA, fp32 on CPU); the draft trains in fp32 (TF32)
    progress: bool = option(True, "no progress bar", negate=True)
    tensorboard: bool = option(True, "no TensorBoard logs", negate=True)
    # Library settings (no option of `beagle train`).
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.0
    grad_clip: float = 0.5  # max grad norm
    ce_weight: float | None = None  # None: the architecture's default (its registration's loss_defaults)
    vloss_weight: float | None = None  # None: the architecture's default
    heldout_fraction: float = 0.02
    heldout_max: int = 256
    regenerate_max_new_tokens: int = 1024
    log_every: int = 10

    @property
    def total_epochs(self) -> int:
        return self.epochs_stage1 + self.epochs_stage2

    @property
    def architecture(self) -> registry.Architecture:
        return registry.architecture(self.arch)

    def validate(self) -> "TrainConfig":
        # Checks that need torch import it here: `beagle train --help` reads this module.
        from beagle.target_model.model import check_device
        from beagle.training.distributed import check_fsdp_mode

        if self.resume_anyway:
            self.resume = True
        if self.resume and self.overwrite:
            raise BeagleError("--resume continues the run in --out and --overwrite replaces it: pass one of them")
        check_device(self.device)
        if self.arch not in registry.names():
            raise BeagleError(f"unknown --arch {self.arch!r}; choose one of {', '.join(registry.names())}")
        if (self.data is None) == (self.features is None):
            raise BeagleError("pass exactly one of --data (conversations) or --features (a `beagle datagen` folder)")
        if self.total_epochs <= 0:
            raise BeagleError("nothing to train: --epochs-stage1 + --epochs-stage2 is 0")
        if self.batch_size <= 0 or (self.micro_batch_size is not None and self.micro_batch_size <= 0):
            raise BeagleError("batch sizes must be positive")
        if self.epochs_stage1 < 0 or self.epochs_stage2 < 0:
            raise BeagleError("--epochs-stage1 and --epochs-stage2 cannot be negative")
        if self.window < 1 or self.sim_steps < 1:
            raise BeagleError("--window and --sim-steps must be at least 1")
        if self.stage2_window is not None and self.stage2_window < self.sim_steps:
            raise BeagleError("the stage-2 window must be at least --sim-steps")
        self._check_architecture_options()
        if not self.first_position_weight > 0 or self.noise_std < 0:
            raise BeagleError("--first-position-weight must be positive and --noise-std at least 0")
        if self.draft_kv_heads is not None and self.draft_kv_heads < 1:
            raise BeagleError(f"--draft-kv-heads must be at least 1 (got {self.draft_kv_heads})")
        if self.init_draft is not None and self.draft_kv_heads is not None:
            raise BeagleError("--init-draft brings its own key/value heads; drop --draft-kv-heads")
        if self.features is not None and self.regenerate:
            raise BeagleError("--regenerate works on --data; regenerate before `beagle datagen` instead")
        check_fsdp_mode(self.fsdp)
        if self.draft_vocab is not None:
            self.draft_vocab = str(self.draft_vocab)
            if self.draft_vocab.isdigit() and int(self.draft_vocab) < 1:
                raise BeagleError("--draft-vocab N needs N ≥ 1 (or a vocabulary file)")
        if self.regenerate and self.fsdp in ("target", "both"):
            raise BeagleError("--regenerate needs the whole target on one device; regenerate without --fsdp target "
                              "first (the answers are cached), then train with it")
        if self.lr_schedule not in LR_SCHEDULES:
            raise BeagleError(f"unknown --lr-schedule {self.lr_schedule!r}; choose one of {', '.join(LR_SCHEDULES)}")
        if self.eval_prompt_count < 1 or self.eval_new_tokens < 1 or self.eval_top_k < 1:
            raise BeagleError("--eval-prompt-count, --eval-new-tokens and --eval-top-k must be at least 1")
        if self.keep_best is not None and self.keep_best.startswith("prompts") and self.eval_prompts is None:
            raise BeagleError(f"--keep-best {self.keep_best} measures on --eval-prompts; pass --eval-prompts mt-bench "
                              "(or another set) or --keep-best tau")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise BeagleError(f"--min-lr-ratio is a fraction of --lr, between 0 and 1 (got {self.min_lr_ratio})")
        return self

    def _check_architecture_options(self) -> None:
        """Refuse an option that only other architectures read (the registry's ``options``), when set (not
        its default, or a value of ARCHITECTURE_OPTIONS_UNSET)."""
        defaults = {item.name: item.default for item in fields(self)}
        for name in dict.fromkeys(option for item in registry.architectures() for option in item.options):
            unset = ARCHITECTURE_OPTIONS_UNSET.get(name, (defaults[name],))
            takers = registry.taking_option(name)
            if getattr(self, name) not in unset and self.arch not in takers:
                flag = "--" + name.replace("_", "-")
                raise BeagleError(f"{flag} applies to --arch {' / '.join(takers)} only, not {self.arch}")

    @property
    def shards_target(self) -> bool:
        return self.fsdp in ("target", "both")

    @property
    def shards_draft(self) -> bool:
        return self.fsdp in ("draft", "both")

    def objective_settings(self) -> ObjectiveSettings:
        return ObjectiveSettings(
            window=self.window,
            sim_steps=self.sim_steps,
            stage2_window=self.stage2_window,
            ttt_steps=max(1, self.ttt_steps),
            ce_weight=self.ce_weight,
            vloss_weight=self.vloss_weight,
            noise=self.noise,
            noise_std=self.noise_std,
            first_position_weight=self.first_position_weight,
            loss_chunk=self.loss_chunk,
        )

    def stage_of(self, epoch: int) -> int:
        """The training stage (1 or 2) of 0-based ``epoch`` (architectures of one stage: always 1)."""
        return self.architecture.stage_of(epoch, self.epochs_stage1)
