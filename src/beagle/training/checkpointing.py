"""A run's checkpoints in its output folder: the folder guard, saving, resuming, the RNG state.

``out/`` holds the draft (``config.json`` + ``model.safetensors``, loadable by
:func:`beagle.models.checkpoint.load_draft`, with the run's settings and evaluation history in
``config.training``), ``trainer_state.pt`` (weights, AdamW and scheduler state, progress, RNG states, the
settings, a digest of the data, the target's fingerprint, the learning-rate schedule) and ``logs/``.

The output folder is guarded (:func:`prepare_output_folder`): a run never writes over another one
unless told (``resume`` continues it, ``overwrite`` replaces it), temporaries of a killed run are
removed at the start, and resuming checks that the settings, the data (a digest of the tokenized
examples or feature shards) and the target (shapes + weight fingerprint) are the saved run's
(``resume_anyway`` continues regardless, with a warning; see :func:`check_resumable`). Every write is
atomic (a temporary renamed into place), so a crash mid-save leaves the previous checkpoint.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from beagle.errors import BeagleError
from beagle.files import TEMPORARY_SUFFIX, atomic_file, remove_stale
from beagle.target_model.fingerprint import same_weights
from beagle.training.config import TrainConfig
from beagle.training.distributed import load_full_state
from beagle.training.schedule import LRSchedule

logger = logging.getLogger(__name__)

STATE_NAME = "trainer_state.pt"
STATE_VERSION = 2  # 2: optimizer state keyed by parameter name (any --fsdp mode); 1 still loads
LOGS_NAME = "logs"
BEST_NAME = "best"  # --keep-best: the draft of the best evaluation so far
# Left in --out by a run killed mid-save: the draft's staging folder (and save_draft's temporaries and
# backup of it), the trainer state's temporary file. Removed when the next run starts.
STALE_TEMPORARIES = (".draft-staging", ".draft-staging.old", "..draft-staging.*", f".{STATE_NAME}.tmp",
                     f".{STATE_NAME}.*{TEMPORARY_SUFFIX}", f"{BEST_NAME}/.draft-staging",
                     f"{BEST_NAME}/.draft-staging.old", f"{BEST_NAME}/..draft-staging.*")
# TrainConfig fields a resumed run may change: how long it runs, how it is laid out on the hardware, what
# it logs, and the paths (the data and the target are compared by content instead).
RESUME_MAY_CHANGE = frozenset({
    "target", "data", "features", "out", "max_steps", "epochs_stage2", "resume", "resume_anyway", "overwrite",
    "fsdp", "micro_batch_size", "device", "dtype", "tensorboard", "progress", "log_every", "loss_chunk",
    "regenerate_batch_size", "eval_prompts", "eval_prompt_count", "eval_new_tokens", "eval_top_k", "keep_best",
})



@dataclass
class Progress:
    """Where training stands: optimizer steps done, current epoch, next batch of the epoch."""

    step: int = 0
    epoch: int = 0
    position: int = 0
    history: list = field(default_factory=list)  # one evaluation dict per finished epoch


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# _atomic_torch_save, _save_draft_into and prepare_output_folder moved here whole from trainer.py.
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
        for name in (CONFIG_NAME, WEIGHTS_NAME, STATE_NAME, LOGS_NAME, BEST_NAME):
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



# --------------------------------------------------------------------------- saving


def save_checkpoint(out: Path, config: TrainConfig, draft, model_state: dict, optimizer_state: dict, scheduler,
                    progress: Progress, schedule: LRSchedule, data_digest: str | None, target: dict,
                    best: bool = False) -> None:
    """Write the draft and ``trainer_state.pt`` into ``out`` (main rank; ``model_state`` / ``optimizer_state``:
    the full states, gathered when sharded; ``target``: the target's fingerprint with its weights').
    ``best``: the latest evaluation is the best so far (--keep-best): the draft goes to ``out/best`` too,
    before the trainer state that records it."""
    out.mkdir(parents=True, exist_ok=True)
    extra = {
        "arch": config.arch, "step": progress.step, "epochs_done": progress.epoch,
        "epochs_stage1": config.epochs_stage1, "epochs_stage2": config.epochs_stage2,
        "window": config.window, "sim_steps": config.sim_steps,
        "stage2_window": config.stage2_window or config.sim_steps, "ttt_steps": config.ttt_steps,
        "batch_size": config.batch_size, "lr": config.lr, "seed": config.seed, "max_length": config.max_length,
        "data": config.data, "features": config.features, "draft_vocab": config.draft_vocab,
        "regenerate": config.regenerate, "eval_data": config.eval_data, "draft_kv_heads": config.draft_kv_heads,
        "last_state_skip": config.last_state_skip,
        "first_position_weight": config.first_position_weight, "noise": config.noise, "noise_std": config.noise_std,
        "init_draft": config.init_draft, "warmup": config.warmup, "lr_schedule": schedule.kind,
        "min_lr_ratio": schedule.min_ratio, "lr_total_steps": schedule.total_steps,
        "eval": progress.history[-1] if progress.history else None,
        "history": progress.history,
    }
    _save_draft_into(draft, model_state, out, extra)
    if best:
        (out / BEST_NAME).mkdir(exist_ok=True)
        _save_draft_into(draft, model_state, out / BEST_NAME, {**extra, "kept_by": config.keep_best})
        logger.info("best %s so far: the draft of step %d is in %s", config.keep_best, progress.step, out / BEST_NAME)
    state = {
        "version": STATE_VERSION,
        "model": model_state,
        "optimizer": optimizer_state,
        "scheduler": scheduler.state_dict(),
        "lr_schedule": asdict(schedule),
        "progress": asdict(progress),
        "rng": rng_state(),
        "config": asdict(config),
        "data_digest": data_digest,
        "target": target,
        "draft_vocab": draft.vocab.ids if draft.vocab is not None else None,
    }
    _atomic_torch_save(state, out / STATE_NAME)
    logger.info("checkpoint at step %d written to %s", progress.step, out)


# --------------------------------------------------------------------------- resuming


def _damaged(path: Path, reason: str) -> BeagleError:
    return BeagleError(f"cannot resume: {path} is damaged or incomplete ({reason}); restore it, or pass --overwrite "
                       "instead of --resume to start the run afresh")


def load_trainer_state(path: Path) -> dict:
    """The trainer state saved at ``path``; BeagleError when it is damaged or not one."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # noqa: BLE001 - truncated zip, bad pickle, ...: all mean a damaged file
        raise _damaged(path, f"{type(error).__name__}: {_first_sentence(error)}") from None
    if not isinstance(state, dict) or not {"model", "optimizer", "scheduler", "progress", "rng"} <= set(state):
        raise _damaged(path, "not a Beagle trainer state")
    return state


def check_resumable(state: dict, config: TrainConfig, out: Path, data_digest: str | None, target: dict) -> None:
    """Refuse to resume a run whose settings, data or target differ from the saved ones (``resume_anyway``:
    warn and continue; the architecture must match in any case). ``target``: the current target's record."""
    saved = state.get("config") or {}
    current = asdict(config)
    if "arch" in saved and saved["arch"] != current["arch"]:
        raise BeagleError(f"cannot resume: the saved run in {out} trains an {saved['arch']} draft, not "
                          f"{current['arch']}; pass --arch {saved['arch']}, or --overwrite to start afresh")
    differences = [f"{key} was {saved[key]!r}, now {current[key]!r}" for key in current
                   if key not in RESUME_MAY_CHANGE and key in saved and not _same_setting(saved[key], current[key])]
    if state.get("data_digest") is None:
        logger.warning("%s records no digest of its data (saved by an older Beagle): the data was not checked",
                       out / STATE_NAME)
    elif data_digest is not None and state["data_digest"] != data_digest:
        differences.append("the training data differ (another file, other contents or another --max-length)")
    recorded, now = state.get("target") or {}, target
    shapes = [key for key in ("model_type", "vocab_size", "hidden_size", "num_hidden_layers")
              if key in recorded and recorded[key] != now[key]]
    if shapes or (recorded.get("weights") and same_weights(recorded["weights"], now["weights"]) is False):
        differences.append(f"the target differs (saved {recorded.get('name')!r}, now {now['name']!r}"
                           + (f": {', '.join(shapes)}" if shapes else ": other weights") + ")")
    if not differences:
        return
    listing = "; ".join(differences)
    if config.resume_anyway:
        logger.warning("--resume-anyway: continuing the run in %s although %s", out, listing)
        return
    raise BeagleError(f"cannot resume the run in {out}: {listing}. Rerun with the saved settings and data, "
                      "pass --resume-anyway to continue regardless, or --overwrite to start afresh")


def check_same_vocab(state: dict, draft, path: Path) -> None:
    """Refuse to resume with another draft vocabulary than the saved run's."""
    saved_vocab = state.get("draft_vocab")
    current = draft.vocab.ids if draft.vocab is not None else None
    if (saved_vocab is None) != (current is None) or (current is not None and not torch.equal(saved_vocab, current)):
        raise BeagleError(f"cannot resume: the draft vocabulary differs from the one {path} was trained with")


def saved_schedule(state: dict, fallback: LRSchedule) -> LRSchedule:
    """The learning-rate schedule the saved run followed (states from before schedules were recorded ran
    warm-up then constant: ``fallback``, the current settings' schedule, holds their warm-up)."""
    recorded = state.get("lr_schedule")
    return LRSchedule(**recorded) if recorded else LRSchedule("constant", fallback.warmup, fallback.total_steps)


def restore_training_state(state: dict, draft, optimizer, scheduler, shards_draft: bool, path: Path) -> Progress:
    """Load the saved weights, optimizer, scheduler and RNG states into the run; returns its progress."""
    try:
        if state.get("version", 1) >= 2:
            load_full_state(draft, optimizer, state["model"], state["optimizer"])
        elif shards_draft:
            raise BeagleError(f"{path} was written by an older Beagle; resume it without --fsdp draft")
        else:
            draft.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        progress = Progress(**state["progress"])
        set_rng_state(state["rng"])
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise _damaged(path, f"{type(error).__name__}: {_first_sentence(error)}") from None
    return progress
