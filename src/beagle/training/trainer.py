"""The training loop: both draft architectures, online or offline features, resume, data parallel.

One optimizer step::

    global batch (batch_size sequences, deterministic order)  ──split──> ranks ──split──> micro-batches
    counts of loss positions, summed over the global batch (all_reduce)      # so every split gives one mean
    for each micro-batch: target states (online, or read from datagen shards) -> objective -> backward
    all_reduce(sum) of gradients  ->  clip (norm 0.5)  ->  AdamW  ->  LR schedule (warm-up, then constant)

Beagle trains ``epochs_stage1`` epochs of L_early (inverse block mask) then ``epochs_stage2`` epochs of
the stage-2 simulation; EAGLE-2 trains the same number of epochs with its own loss (or TTT).
Randomness that touches training (noise, window offsets) is drawn per sequence from
(seed, step, sequence index), so results do not depend on the batch split, the number of ranks or
on resuming. After each epoch (and where --max-steps stops a run): held-out evaluation (simulated
acceptance, τ; on a split of the data or on ``eval_data``) and an atomic checkpoint:
``out/config.json`` + ``out/model.safetensors`` (the draft) and ``out/trainer_state.pt``.

The output folder is guarded (:func:`prepare_output_folder`): a run never writes over another one
unless told (``resume`` continues it, ``overwrite`` replaces it), temporaries of a killed run are
removed at the start, and ``resume`` checks that the settings, the data (a digest of the tokenized
examples or feature shards) and the target (shapes + weight fingerprint) are the saved run's
(``resume_anyway`` continues regardless, with a warning).

Data parallel: launched by ``torchrun`` (RANK / WORLD_SIZE set), every rank holds the draft and a
replica of the target and processes its share of each global batch; gradients are summed with one
all_reduce per step (not ``DistributedDataParallel``: the stage-2 objective backpropagates once per
simulated step, which a manual all_reduce handles without per-backward syncs). ``fsdp`` shards the
draft, the target or both instead (:mod:`beagle.training.distributed`). Rank 0 writes checkpoints and logs.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from beagle.errors import BeagleError
from beagle.files import TEMPORARY_SUFFIX, atomic_file, destination_path, remove_stale
from beagle.ranks import Distributed, setup_distributed
from beagle.training.distributed import (
    check_fsdp_mode,
    device_mesh,
    full_state,
    gradient_scale,
    load_full_state,
    local_norm,
    shard_draft,
    shard_target,
)

logger = logging.getLogger(__name__)

STATE_NAME = "trainer_state.pt"
STATE_VERSION = 2  # 2: optimizer state keyed by parameter name (any --fsdp mode); 1 still loads
LOGS_NAME = "logs"
# Left in --out by a run killed mid-save: the draft's staging folder (and save_draft's temporaries and
# backup of it), the trainer state's temporary file. Removed when the next run starts.
STALE_TEMPORARIES = (".draft-staging", ".draft-staging.old", "..draft-staging.*", f".{STATE_NAME}.tmp",
                     f".{STATE_NAME}.*{TEMPORARY_SUFFIX}")
# TrainConfig fields a resumed run may change: how long it runs, how it is laid out on the hardware, what
# it logs, and the paths (the data and the target are compared by content instead).
RESUME_MAY_CHANGE = frozenset({
    "target", "data", "features", "out", "max_steps", "epochs_stage2", "resume", "resume_anyway", "overwrite",
    "fsdp", "micro_batch_size", "device", "dtype", "tensorboard", "progress", "log_every", "loss_chunk",
    "regenerate_batch_size",
})


@dataclass
class TrainConfig:
    """Settings of ``beagle train`` (defaults follow the paper, App. A.3)."""

    target: str | None = None  # HF folder / hub id (or pass a TargetModel to train())
    data: str | None = None  # conversations (JSON / JSONL), see beagle.data.conversations
    features: str | None = None  # or a `beagle datagen` folder
    arch: str = "beagle"  # beagle | eagle2
    out: str = "runs/draft"
    epochs_stage1: int = 10
    epochs_stage2: int = 10
    window: int = 5  # stage-1 window k
    sim_steps: int = 4  # stage-2 simulated steps s
    stage2_window: int | None = None  # stage-2 window (default: sim_steps)
    ttt_steps: int = 0  # EAGLE-2 only: EAGLE-3-style unrolled steps (0/1 = plain EAGLE-2)
    max_steps: int | None = None
    batch_size: int = 16  # global batch (sequences per optimizer step)
    micro_batch_size: int | None = None  # per rank; gradient accumulation when smaller
    lr: float = 3e-5
    warmup: int = 2000  # linear warm-up steps, then constant
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.0
    grad_clip: float = 0.5  # max grad norm
    ce_weight: float | None = None  # default per arch: beagle 1.0, eagle2 0.1
    vloss_weight: float | None = None  # default per arch: beagle 10.0, eagle2 1.0
    noise: str | None = None  # gaussian | uniform | none (default per arch: beagle gaussian, eagle2 uniform)
    noise_std: float = 0.2
    loss_chunk: int | None = None  # rows per checkpointed LM-head loss chunk (saves [N, V] logits memory)
    # draft vocabulary: None (the target's full vocabulary), "N" (the N most frequent assistant tokens of the
    # training split, EOS ids kept) or a vocabulary file from `beagle vocab` (see beagle.vocab)
    draft_vocab: str | None = None
    seed: int = 0
    max_length: int = 2048
    heldout_fraction: float = 0.02
    heldout_count: int | None = None  # overrides the fraction (0 = no evaluation)
    heldout_max: int = 256
    eval_depth: int = 5  # draft positions measured by the held-out acceptance
    regenerate: bool = False  # replace assistant turns by the target's own greedy answers
    regenerate_max_new_tokens: int = 1024
    regenerate_batch_size: int | None = None  # rows per generate call (None: 256 on CUDA, 8 on CPU)
    draft_kv_heads: int | None = None  # the draft's key/value heads (None: the target's)
    eval_data: str | None = None  # held-out data (conversations or a datagen folder) instead of a split
    init_draft: str | None = None  # start from this draft's weights (a checkpoint folder or shipped name)
    resume: bool = False
    resume_anyway: bool = False  # resume even when the data, settings or target differ from the saved run
    overwrite: bool = False  # replace the run already in `out` (its draft, trainer state and logs)
    fsdp: str = "none"  # none | draft | target | both (see beagle.training.distributed)
    device: str | None = None
    dtype: str = "auto"  # target dtype (auto: bf16 on CUDA, fp32 on CPU); the draft trains in fp32 (TF32)
    tensorboard: bool = True
    progress: bool = True
    log_every: int = 10

    @property
    def total_epochs(self) -> int:
        return self.epochs_stage1 + self.epochs_stage2

    def validate(self) -> "TrainConfig":
        from beagle.target_model.model import check_device

        if self.resume_anyway:
            self.resume = True
        if self.resume and self.overwrite:
            raise BeagleError("--resume continues the run in --out and --overwrite replaces it: pass one of them")
        check_device(self.device)
        if self.arch not in ("beagle", "eagle2"):
            raise BeagleError(f"unknown --arch {self.arch!r}; choose beagle or eagle2")
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
        if self.ttt_steps > 1 and self.arch != "eagle2":
            raise BeagleError("--ttt-steps applies to --arch eagle2 only (Beagle uses --sim-steps)")
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
        return self

    @property
    def shards_target(self) -> bool:
        return self.fsdp in ("target", "both")

    @property
    def shards_draft(self) -> bool:
        return self.fsdp in ("draft", "both")

    def objective_settings(self):
        from beagle.training.objectives import ObjectiveSettings

        return ObjectiveSettings(
            window=self.window,
            sim_steps=self.sim_steps,
            stage2_window=self.stage2_window,
            ttt_steps=max(1, self.ttt_steps),
            ce_weight=self.ce_weight,
            vloss_weight=self.vloss_weight,
            noise=self.noise,
            noise_std=self.noise_std,
            loss_chunk=self.loss_chunk,
        )

    def stage_of(self, epoch: int) -> int:
        """1 or 2 for Beagle (0-based epoch); EAGLE-2 has one stage."""
        return 1 if self.arch == "eagle2" or epoch < self.epochs_stage1 else 2


# --------------------------------------------------------------------------- state


@dataclass
class Progress:
    """Where training stands: optimizer steps done, current epoch, next batch of the epoch."""

    step: int = 0
    epoch: int = 0
    position: int = 0
    history: list = field(default_factory=list)  # one evaluation dict per finished epoch


def sequence_seed(seed: int, step: int, sample: int) -> int:
    """The seed of one sequence's noise / window offsets at one step (independent of batching)."""
    value = (seed * 0x9E3779B1 + step * 0x85EBCA77 + sample * 0xC2B2AE3D) & ((1 << 62) - 1)
    return value ^ (value >> 29)


def _rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _atomic_torch_save(obj, path: Path) -> None:
    with atomic_file(path) as temporary:
        torch.save(obj, temporary)


def _save_draft_into(draft, state_dict: dict, out: Path, extra: dict) -> None:
    """Write config.json + model.safetensors (``state_dict``: the draft's full weights) into ``out`` without
    touching its other files (save_draft replaces whole folders): save to a staging folder, then rename."""
    from beagle.models.checkpoint import CONFIG_NAME, WEIGHTS_NAME, save_draft
    from beagle.vocab.core import VOCAB_FILE_NAME

    staging = out / ".draft-staging"
    save_draft(draft, staging, extra=extra, state_dict=state_dict)
    if (staging / VOCAB_FILE_NAME).is_file():
        os.replace(staging / VOCAB_FILE_NAME, out / VOCAB_FILE_NAME)  # before the config that declares it
    for name in (WEIGHTS_NAME, CONFIG_NAME):
        os.replace(staging / name, out / name)
    if draft.vocab is None and (out / VOCAB_FILE_NAME).is_file():
        os.remove(out / VOCAB_FILE_NAME)  # left by an earlier run with a draft vocabulary
    staging.rmdir()


def prepare_output_folder(out: Path, resume: bool, overwrite: bool) -> None:
    """Make ``out`` ready for a run (main rank): remove what a killed run left, then refuse to write over
    a folder holding files unless ``resume`` (continue the run there) or ``overwrite`` (replace it)."""
    from beagle.models.checkpoint import CONFIG_NAME, WEIGHTS_NAME

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise BeagleError(f"--out {out} is a file; pass a folder")
    remove_stale(out, STALE_TEMPORARIES)
    entries = sorted(path.name for path in out.iterdir()) if out.is_dir() else []
    if not entries:
        return
    if overwrite:
        removed = []
        for name in (CONFIG_NAME, WEIGHTS_NAME, STATE_NAME, LOGS_NAME):
            path = out / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()
            else:
                continue
            removed.append(name)
        if removed:
            logger.warning("--overwrite: removed the previous run in %s (%s)", out, ", ".join(removed))
        return
    if resume:
        if (out / STATE_NAME).is_file() or not ((out / CONFIG_NAME).exists() or (out / WEIGHTS_NAME).exists()):
            return  # maybe_resume continues the run (or starts one, with a warning, where none was saved)
        raise BeagleError(f"cannot --resume in {out}: it holds a draft but no {STATE_NAME} to continue from; pass "
                          "--overwrite instead of --resume to train afresh there (replacing that draft), or choose "
                          "another --out")
    shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
    raise BeagleError(f"--out {out} is not empty ({shown}); pass --resume to continue the run saved there, "
                      "--overwrite to replace it, or choose another --out")


def _first_sentence(error: BaseException) -> str:
    lines = str(error).strip().splitlines() or [""]
    return lines[0].split(". ")[0][:200]


def _same_setting(saved, current) -> bool:
    if isinstance(saved, (list, tuple)) and isinstance(current, (list, tuple)):
        return list(saved) == list(current)
    return saved == current


# --------------------------------------------------------------------------- data


def _load_dataset(config: TrainConfig, target, dist: Distributed):
    from beagle.data.conversations import ChatDataset

    if config.features is not None:
        return _feature_dataset(config.features, target)
    data = _regenerated(config, target, dist) if config.regenerate else config.data
    return ChatDataset.from_file(data, target.tokenizer, config.max_length, progress=config.progress and dist.is_main)


def _feature_dataset(folder, target):
    from beagle.data.features import FeatureDataset

    dataset = FeatureDataset(folder)
    dataset.check_target(target.fingerprint(), target.weights_fingerprint())
    return dataset


def _regenerated(config: TrainConfig, target, dist: Distributed) -> Path:
    """The cached target-regenerated copy of ``config.data`` (made now when missing; every rank takes a shard)."""
    from beagle.data.regenerate import RegenerateSettings, cached_regeneration, regenerate_file

    settings = RegenerateSettings(max_new_tokens=config.regenerate_max_new_tokens, max_length=config.max_length,
                                  batch_size=config.regenerate_batch_size)
    path = cached_regeneration(target, config.data, settings)
    report = regenerate_file(target, config.data, path, settings, dist, progress=config.progress and dist.is_main)
    if report.existed:
        logger.info("using regenerated answers from %s", path)
    return path


def _eval_dataset(config: TrainConfig, target):
    """--eval-data: a `beagle datagen` folder or a conversations file (tokenized like the training data)."""
    from beagle.data.conversations import ChatDataset

    if Path(config.eval_data).is_dir():
        return _feature_dataset(config.eval_data, target)
    return ChatDataset.from_file(config.eval_data, target.tokenizer, config.max_length)


def _initial_draft(config: TrainConfig, target):
    """--init-draft: the draft to continue training from (fine-tuning, e.g. a shipped draft on regenerated data),
    in fp32, with the current target's fingerprint; its vocabulary stays unless --draft-vocab replaces it."""
    from beagle.models.checkpoint import load_draft

    draft = load_draft(config.init_draft, target, dtype=torch.float32)
    if draft.config.arch != config.arch:
        raise BeagleError(f"--init-draft {config.init_draft} holds an --arch {draft.config.arch} draft, not {config.arch}; "
                          f"pass --arch {draft.config.arch}")
    draft.config.target = {**target.fingerprint(), "weights": target.weights_fingerprint()}
    logger.info("starting from the weights of %s", config.init_draft)
    return draft


def split_heldout(size: int, config: TrainConfig) -> tuple[list[int], list[int]]:
    """Deterministic (train indices, held-out indices) for a dataset of ``size`` sequences."""
    if config.heldout_count is not None:
        count = config.heldout_count
    else:
        count = min(config.heldout_max, max(1, round(size * config.heldout_fraction))) if size > 1 else 0
    count = max(0, min(count, size - 1))
    order = torch.randperm(size, generator=torch.Generator().manual_seed(config.seed + 4242)).tolist()
    return sorted(order[count:]), sorted(order[:count])


def _make_batch(dataset, indices: list[int], step: int, seed: int, pad_id: int):
    from beagle.data.conversations import collate
    from beagle.training.objectives import TrainBatch

    collated = collate([dataset[i] for i in indices], pad_id=pad_id)
    seeds = torch.tensor([sequence_seed(seed, step, i) for i in indices], dtype=torch.long)
    return TrainBatch(collated["input_ids"], collated["attention_mask"], collated["loss_mask"], collated["lengths"],
                      collated.get("states"), seeds)


def _with_states(batch, target, device):
    from beagle.data.features import target_states

    batch = batch.to(device)
    if batch.states is None:  # online: run the frozen target
        batch.states = target_states(target, batch.input_ids, batch.attention_mask)
    return batch


# --------------------------------------------------------------------------- the loop


class Trainer:
    """Holds the run's pieces; :func:`train` is the entry point."""

    def __init__(self, config: TrainConfig, target=None):
        from beagle.models.checkpoint import build_draft
        from beagle.data.conversations import ShuffledBatches

        self.config = config.validate()
        # A target passed in decides the device (the draft shares its embedding and LM head).
        device = config.device or (str(target.device) if target is not None else None)
        self.dist, self.device = setup_distributed(device, process_group=config.fsdp != "none")
        self.mesh = device_mesh(self.dist, self.device) if config.fsdp != "none" else None
        if config.batch_size % self.dist.world_size:
            raise BeagleError(f"--batch-size {config.batch_size} is not divisible by the {self.dist.world_size} ranks")
        self.out = destination_path(config.out)
        if self.dist.is_main:  # before the (slow) loading: a folder holding another run is refused at once
            prepare_output_folder(self.out, config.resume, config.overwrite)
        self.rank_batch = config.batch_size // self.dist.world_size
        self.micro_batch = min(config.micro_batch_size or self.rank_batch, self.rank_batch)
        if self.device.type == "cuda":
            from beagle.kernels.attention_backend import configure_attention

            configure_attention(self.device)  # batches of new lengths would re-plan cuDNN attention each step
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        if target is None:
            if config.target is None:
                raise BeagleError("pass --target")
            from beagle.target_model.model import load_target, resolve_dtype

            # A target to shard is read on the CPU; shard_target moves each layer's shard to the GPU.
            load_on = "cpu" if config.shards_target else str(self.device)
            target = load_target(config.target, dtype=resolve_dtype(config.dtype, self.device), device=load_on)
        self.target = target
        self.dataset = _load_dataset(config, target, self.dist)
        self._data_digest: str | None = None
        if config.eval_data is not None:  # a separate held-out set: all of the training data trains
            self.eval_dataset = _eval_dataset(config, target)
            count = len(self.eval_dataset) if config.heldout_count is None else config.heldout_count
            self.train_indices = list(range(len(self.dataset)))
            self.heldout_indices = list(range(min(count, len(self.eval_dataset))))
        else:
            self.eval_dataset = self.dataset
            self.train_indices, self.heldout_indices = split_heldout(len(self.dataset), config)
        if config.shards_target:
            shard_target(target, self.mesh, self.device)
        if len(self.train_indices) < config.batch_size:
            raise BeagleError(f"only {len(self.train_indices)} training sequences for a batch of {config.batch_size}")
        self.batches = ShuffledBatches(self.train_indices, config.batch_size, config.seed)
        tokenizer = getattr(target, "tokenizer", None)
        self.pad_id = int(getattr(tokenizer, "pad_token_id", None) or 0)

        torch.manual_seed(config.seed)  # identical initial weights on every rank
        if config.init_draft is not None:
            self.draft = _initial_draft(config, target).to(self.device).train()
        else:
            self.draft = build_draft(target, config.arch, config.draft_kv_heads).to(self.device).train()
        if config.draft_vocab is not None:
            self.draft.set_vocab(self._draft_vocab())
        if config.shards_draft:
            shard_draft(self.draft, self.mesh)  # the same seeded weights on every rank, now 1/N each
        elif self.dist.enabled:
            for parameter in self.draft.parameters():
                torch.distributed.broadcast(parameter.data, src=0)
        self.parameters = [p for p in self.draft.parameters() if p.requires_grad]
        fused = self.device.type == "cuda" and not config.shards_draft
        self.optimizer = torch.optim.AdamW(self.parameters, lr=config.lr, betas=tuple(config.betas),
                                           weight_decay=config.weight_decay, fused=fused or None)
        warmup = max(0, config.warmup)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: min(1.0, (step + 1) / warmup) if warmup else 1.0)
        self.progress = Progress()
        self.settings = config.objective_settings()
        self.writer = None
        self.peak_memory_gib: list[float] = []  # per rank, set by run() on CUDA
        self.loop_seconds = 0.0  # wall time of run()'s training loop
        self._last_log = time.perf_counter()
        self._tokens_since_log = 0

    # ------------------------------------------------------------------ setup
    def num_parameters(self) -> int:
        return self.draft.num_parameters()

    @property
    def data_digest(self) -> str | None:
        """The dataset's content digest (computed once), recorded in the trainer state and checked on resume."""
        if self._data_digest is None and hasattr(self.dataset, "content_digest"):
            self._data_digest = self.dataset.content_digest()
        return self._data_digest

    def target_record(self) -> dict:
        return {**self.target.fingerprint(), "weights": self.target.weights_fingerprint()}

    def _draft_vocab(self):
        """--draft-vocab: "N" builds it from the training split's assistant tokens (the same on every rank:
        counting is deterministic), anything else is a vocabulary file."""
        from beagle.vocab.core import load_vocab
        from beagle.data.vocab_counts import vocab_from_dataset

        value = self.config.draft_vocab
        if value.isdigit():
            vocab = vocab_from_dataset(self.dataset, int(value), self.target, self.config.data or self.config.features,
                                       indices=self.train_indices)
            logger.info("draft vocabulary from the training split: %s", vocab.describe())
            return vocab
        return load_vocab(value)

    def maybe_resume(self) -> None:
        path = self.out / STATE_NAME
        if not self.config.resume:
            return
        if not path.is_file():
            logger.warning("--resume: no %s in %s; starting from scratch", STATE_NAME, self.out)
            return
        damaged = (f"cannot resume: {path} is damaged or incomplete ({{}}); restore it, or pass --overwrite "
                   "instead of --resume to start the run afresh")
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as error:  # noqa: BLE001 - truncated zip, bad pickle, ...: all mean a damaged file
            raise BeagleError(damaged.format(f"{type(error).__name__}: {_first_sentence(error)}")) from None
        if not isinstance(state, dict) or not {"model", "optimizer", "scheduler", "progress", "rng"} <= set(state):
            raise BeagleError(damaged.format("not a Beagle trainer state"))
        self._check_resumable(state)
        saved_vocab = state.get("draft_vocab")
        current = self.draft.vocab.ids if self.draft.vocab is not None else None
        if (saved_vocab is None) != (current is None) or (current is not None and not torch.equal(saved_vocab, current)):
            raise BeagleError(f"cannot resume: the draft vocabulary differs from the one {path} was trained with")
        try:
            if state.get("version", 1) >= 2:
                load_full_state(self.draft, self.optimizer, state["model"], state["optimizer"])
            elif self.config.shards_draft:
                raise BeagleError(f"{path} was written by an older Beagle; resume it without --fsdp draft")
            else:
                self.draft.load_state_dict(state["model"])
                self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.progress = Progress(**state["progress"])
            _set_rng_state(state["rng"])
        except (KeyError, TypeError, ValueError, RuntimeError) as error:
            raise BeagleError(damaged.format(f"{type(error).__name__}: {_first_sentence(error)}")) from None
        logger.info("resumed from %s at step %d (epoch %d, batch %d)", path, self.progress.step,
                    self.progress.epoch, self.progress.position)

    def _check_resumable(self, state: dict) -> None:
        """Refuse to resume a run whose settings, data or target differ from the saved ones (``resume_anyway``:
        warn and continue; the architecture must match in any case)."""
        from beagle.target_model.fingerprint import same_weights

        saved = state.get("config") or {}
        current = asdict(self.config)
        if "arch" in saved and saved["arch"] != current["arch"]:
            raise BeagleError(f"cannot resume: the saved run in {self.out} trains an {saved['arch']} draft, not "
                              f"{current['arch']}; pass --arch {saved['arch']}, or --overwrite to start afresh")
        differences = [f"{key} was {saved[key]!r}, now {current[key]!r}" for key in current
                       if key not in RESUME_MAY_CHANGE and key in saved and not _same_setting(saved[key], current[key])]
        if state.get("data_digest") is None:
            logger.warning("%s records no digest of its data (saved by an older Beagle): the data was not checked",
                           self.out / STATE_NAME)
        elif self.data_digest is not None and state["data_digest"] != self.data_digest:
            differences.append("the training data differ (another file, other contents or another --max-length)")
        recorded, now = state.get("target") or {}, self.target_record()
        shapes = [key for key in ("model_type", "vocab_size", "hidden_size", "num_hidden_layers")
                  if key in recorded and recorded[key] != now[key]]
        if shapes or (recorded.get("weights") and same_weights(recorded["weights"], now["weights"]) is False):
            differences.append(f"the target differs (saved {recorded.get('name')!r}, now {now['name']!r}"
                               + (f": {', '.join(shapes)}" if shapes else ": other weights") + ")")
        if not differences:
            return
        listing = "; ".join(differences)
        if self.config.resume_anyway:
            logger.warning("--resume-anyway: continuing the run in %s although %s", self.out, listing)
            return
        raise BeagleError(f"cannot resume the run in {self.out}: {listing}. Rerun with the saved settings and data, "
                          "pass --resume-anyway to continue regardless, or --overwrite to start afresh")

    # ------------------------------------------------------------------ steps
    def objective(self, epoch: int):
        from beagle.training.objectives import make_objective

        return make_objective(self.config.arch, self.config.stage_of(epoch), self.settings)

    def train_step(self, objective, global_batch: list[int]) -> dict[str, float]:
        """One optimizer step over a global batch of dataset indices. Returns summed metrics."""
        step = self.progress.step
        share = global_batch[self.dist.rank * self.rank_batch : (self.dist.rank + 1) * self.rank_batch]
        micro = [_make_batch(self.dataset, share[i : i + self.micro_batch], step, self.config.seed, self.pad_id)
                 for i in range(0, len(share), self.micro_batch)]
        counts = torch.stack([objective.counts(batch) for batch in micro]).sum(0).to(self.device, torch.float64)
        denominators = self.dist.all_reduce(counts).cpu()
        metrics: dict[str, float] = {}
        tokens = 0
        for batch in micro:
            tokens += int(batch.lengths.sum())
            batch = _with_states(batch, self.target, self.device)
            output = objective(self.draft, batch, denominators, backward=True)
            if output.loss is not None:
                output.loss.backward()
            for key, value in output.metrics.items():
                metrics[key] = metrics.get(key, 0.0) + value
        self._sync_gradients()
        grad_norm = local_norm(torch.nn.utils.clip_grad_norm_(self.parameters, self.config.grad_clip))
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        names = sorted(metrics)
        totals = self.dist.all_reduce(torch.tensor([metrics[n] for n in names] + [tokens], dtype=torch.float64,
                                                   device=self.device)).tolist()
        result = dict(zip(names, totals[:-1]))
        result["tokens"] = totals[-1]
        result["grad_norm"] = grad_norm
        result["lr"] = self.scheduler.get_last_lr()[0]
        return result

    def _sync_gradients(self) -> None:
        if self.config.shards_draft:  # FSDP reduce-scattered them in backward
            scale = gradient_scale(self.draft)
            if scale != 1.0:
                for parameter in self.parameters:
                    if parameter.grad is not None:
                        parameter.grad.mul_(scale)
            return
        if not self.dist.enabled:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.parameters]
        flat = torch.cat([g.reshape(-1) for g in grads])
        self.dist.all_reduce(flat)
        offset = 0
        for parameter, grad in zip(self.parameters, grads):
            size = grad.numel()
            parameter.grad = flat[offset : offset + size].view_as(grad).clone()
            offset += size

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self, epoch: int) -> dict:
        """Held-out simulated acceptance by draft position, τ, and the current objective's loss (no noise),
        on the held-out split (or --eval-data)."""
        from beagle.training.objectives import make_objective, simulated_acceptance, simulated_tau

        if not self.heldout_indices:
            return {}
        depth = self.config.eval_depth
        self.draft.eval()
        accepted = torch.zeros(depth, dtype=torch.float64)
        counted = torch.zeros(depth, dtype=torch.float64)
        settings = dataclasses.replace(self.settings, noise="none")
        objective = make_objective(self.config.arch, self.config.stage_of(epoch), settings)
        loss_sum, loss_weight = 0.0, 0.0
        for start in range(0, len(self.heldout_indices), self.micro_batch):
            indices = self.heldout_indices[start : start + self.micro_batch]
            batch = _make_batch(self.eval_dataset, indices, 0, self.config.seed, self.pad_id)
            counts = objective.counts(batch).double()
            batch = _with_states(batch, self.target, self.device)
            output = objective(self.draft, batch, counts, backward=False)
            loss_sum += float(output.metrics["loss"]) * float(counts.sum())
            loss_weight += float(counts.sum())
            got, total = simulated_acceptance(self.draft, batch, depth)
            accepted += got
            counted += total
        self.draft.train()
        rates, tau = simulated_tau(accepted, counted)
        return {"epoch": epoch + 1, "step": self.progress.step, "stage": self.config.stage_of(epoch),
                "loss": loss_sum / max(loss_weight, 1.0), "acceptance": rates, "tau": tau,
                "counted": counted.tolist()}

    # ------------------------------------------------------------------ saving
    def save(self) -> None:
        if not (self.dist.is_main or self.config.shards_draft):
            return
        model_state, optimizer_state = full_state(self.draft, self.optimizer)  # collective when sharded
        if not self.dist.is_main:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        config = self.config
        extra = {
            "arch": config.arch, "step": self.progress.step, "epochs_done": self.progress.epoch,
            "epochs_stage1": config.epochs_stage1, "epochs_stage2": config.epochs_stage2,
            "window": config.window, "sim_steps": config.sim_steps,
            "stage2_window": config.stage2_window or config.sim_steps, "ttt_steps": config.ttt_steps,
            "batch_size": config.batch_size, "lr": config.lr, "seed": config.seed, "max_length": config.max_length,
            "data": config.data, "features": config.features, "draft_vocab": config.draft_vocab,
            "regenerate": config.regenerate, "eval_data": config.eval_data, "draft_kv_heads": config.draft_kv_heads,
            "init_draft": config.init_draft,
            "eval": self.progress.history[-1] if self.progress.history else None,
            "history": self.progress.history,
        }
        _save_draft_into(self.draft, model_state, self.out, extra)
        state = {
            "version": STATE_VERSION,
            "model": model_state,
            "optimizer": optimizer_state,
            "scheduler": self.scheduler.state_dict(),
            "progress": asdict(self.progress),
            "rng": _rng_state(),
            "config": asdict(config),
            "data_digest": self.data_digest,
            "target": self.target_record(),
            "draft_vocab": self.draft.vocab.ids if self.draft.vocab is not None else None,
        }
        _atomic_torch_save(state, self.out / STATE_NAME)
        logger.info("checkpoint at step %d written to %s", self.progress.step, self.out)

    # ------------------------------------------------------------------ logging
    def _open_writer(self) -> None:
        if not (self.dist.is_main and self.config.tensorboard):
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as error:  # tensorboard not installed
            logger.warning("TensorBoard logging off: %s", error)
            return
        self.writer = SummaryWriter(log_dir=str(self.out / "logs"))

    def _log(self, metrics: dict[str, float], bar) -> None:
        self._tokens_since_log += metrics["tokens"]
        step = self.progress.step
        now = time.perf_counter()
        elapsed = max(now - self._last_log, 1e-9)
        if bar is not None:
            bar.set_postfix(loss=f"{metrics['loss']:.4f}", lr=f"{metrics['lr']:.2e}",
                            tok_s=f"{self._tokens_since_log / elapsed:.0f}", refresh=False)
        if step % self.config.log_every and step != 1:
            return
        speed = self._tokens_since_log / elapsed
        self._last_log, self._tokens_since_log = now, 0
        logger.debug("step %d loss %.4f lr %.2e %.0f tokens/s", step, metrics["loss"], metrics["lr"], speed)
        if self.writer is not None:
            for key, value in metrics.items():
                if key != "tokens":
                    self.writer.add_scalar(f"train/{key}", value, step)
            self.writer.add_scalar("train/tokens_per_s", speed, step)

    def _log_eval(self, result: dict) -> None:
        if not result:
            return
        rates = ", ".join(f"{rate:.3f}" for rate in result["acceptance"])
        logger.info("epoch %g: held-out loss %.4f, acceptance [%s], simulated tau %.3f", result["epoch"],
                    result["loss"], rates, result["tau"])
        if self.writer is not None:
            for number, rate in enumerate(result["acceptance"], start=1):
                self.writer.add_scalar(f"eval/acc@{number}", rate, result["step"])
            self.writer.add_scalar("eval/tau", result["tau"], result["step"])
            self.writer.add_scalar("eval/loss", result["loss"], result["step"])
            self.writer.flush()

    # ------------------------------------------------------------------ run
    def run(self) -> Path:
        config = self.config
        self.maybe_resume()
        self._open_writer()
        steps_per_epoch = len(self.batches)
        total = config.total_epochs * steps_per_epoch
        if config.max_steps is not None:
            total = min(total, config.max_steps)
        logger.info("%s draft: %d parameters; %d training / %d held-out sequences; %d steps of %d sequences",
                    config.arch, self.num_parameters(), len(self.train_indices), len(self.heldout_indices), total,
                    config.batch_size)
        bar = None
        if config.progress and self.dist.is_main:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, initial=min(self.progress.step, total), desc="train", unit="step",
                       dynamic_ncols=True)
        started, first_step = time.perf_counter(), self.progress.step
        try:
            self._run_epochs(bar, steps_per_epoch)
        finally:
            if bar is not None:
                bar.close()
            if self.writer is not None:
                self.writer.close()
        self.loop_seconds = time.perf_counter() - started
        logger.info("%d steps in %.1f s (evaluation and checkpoints included)", self.progress.step - first_step,
                    self.loop_seconds)
        self.peak_memory_gib = self._peak_memory_gib()
        self.dist.barrier()
        return self.out

    def _peak_memory_gib(self) -> list[float]:
        """Peak allocated CUDA memory of each rank's GPU (empty on CPU); a collective."""
        if self.device.type != "cuda":
            return []
        values = torch.zeros(self.dist.world_size, dtype=torch.float64, device=self.device)
        values[self.dist.rank] = torch.cuda.max_memory_allocated(self.device) / 2**30
        return self.dist.all_reduce(values).tolist()

    def _done(self) -> bool:
        return self.config.max_steps is not None and self.progress.step >= self.config.max_steps

    def _run_epochs(self, bar, steps_per_epoch: int) -> None:
        config, progress = self.config, self.progress
        while progress.epoch < config.total_epochs and not self._done():
            epoch = progress.epoch
            objective = self.objective(epoch)
            for position, global_batch in self.batches.iterate(epoch, progress.position):
                metrics = self.train_step(objective, global_batch)
                progress.step += 1
                progress.position = position + 1
                if bar is not None:
                    bar.update(1)
                self._log(metrics, bar)
                if not math.isfinite(metrics["loss"]):
                    raise BeagleError(f"the loss became {metrics['loss']} at step {progress.step}; lower --lr")
                if self._done() and progress.position < steps_per_epoch:
                    # stopped mid-epoch (--max-steps): evaluate the checkpoint it leaves too
                    self._evaluate_into_history(epoch, fraction=progress.position / steps_per_epoch)
                    self.save()
                    return
            progress.epoch, progress.position = epoch + 1, 0
            self._evaluate_into_history(epoch)
            self.save()
            self.dist.barrier()

    def _evaluate_into_history(self, epoch: int, fraction: float | None = None) -> None:
        """Evaluate after (``fraction`` of) 0-based ``epoch``; rank 0 logs it and records it in the history."""
        # Sharded modules need every rank in each forward: then all ranks evaluate (rank 0 keeps it).
        if not (self.dist.is_main or self.config.fsdp != "none"):
            return
        result = self.evaluate(epoch)
        if result and self.dist.is_main:
            if fraction is not None:
                result["epoch"] = round(epoch + fraction, 3)
                result["partial_epoch"] = True
            self.progress.history.append(result)
            self._log_eval(result)


def train(config: TrainConfig, target=None) -> Path:
    """Train a draft as ``config`` says; returns the output folder (the final draft checkpoint).

    ``target``: an already loaded :class:`~beagle.target_model.model.TargetModel` (otherwise ``config.target``
    is loaded).
    """
    return Trainer(config, target).run()
