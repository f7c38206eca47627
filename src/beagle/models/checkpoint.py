"""Draft checkpoints: ``config.json`` (architecture, dims, target fingerprint) + ``model.safetensors``,
plus ``draft_vocab.safetensors`` when the draft has a draft vocabulary (:mod:`beagle.vocab`; the config's
``draft_vocab_size`` says so, and a draft without one keeps using the target's full vocabulary).

Writes are atomic (:func:`beagle.files.atomic_folder`): files go to a private temporary folder beside the
destination that replaces it only once complete, so a crash mid-save leaves the previous checkpoint
intact; temporaries a killed save left behind are removed by the next save. The folder and files get
the modes of newly created ones (umask). A folder holding anything but checkpoint files is never
replaced, and a symbolic link is refused. The shared target
embedding / LM head are never stored; ``config.json`` records a fingerprint of them, checked on load.
"""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from beagle.assets import shipped
from beagle.errors import BeagleError
from beagle.files import atomic_folder, destination_path
from beagle.models.config import DraftConfig
from beagle.models.registry import draft_class
from beagle.vocab.core import VOCAB_FILE_NAME, DraftVocab

if TYPE_CHECKING:  # DraftModel imports this module (save_pretrained / from_pretrained)
    from beagle.models.base import DraftModel

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


CHECKPOINT_FILES = frozenset({CONFIG_NAME, WEIGHTS_NAME, VOCAB_FILE_NAME})


def check_replaceable(directory: Path, what: str = "the folder") -> None:
    """Refuse (BeagleError) to replace a folder that holds anything but draft checkpoint files: saving
    replaces the whole folder, and Beagle never deletes files it did not write."""
    directory = Path(directory)
    if not directory.is_dir() or directory.is_symlink():
        return
    others = sorted(path.name for path in directory.iterdir() if path.name not in CHECKPOINT_FILES)
    if others:
        shown = ", ".join(others[:4]) + (", ..." if len(others) > 4 else "")
        raise BeagleError(f"{what} {directory} holds files that are not a draft checkpoint ({shown}); saving replaces "
                          "the whole folder, so choose a new folder (or an earlier draft's)")


def remove_legacy_temporaries(directory: Path) -> list[Path]:
    """Delete the ``.<name>.XXXXXXXX`` folders that killed saves of earlier Beagle versions left beside
    ``directory`` (only folders holding nothing but checkpoint files; today's temporaries are
    :func:`beagle.files.remove_stale_temporaries`'). Returns what was removed."""
    directory = Path(directory)
    pattern = re.compile(re.escape(f".{directory.name}.") + r"[a-z0-9_]{8}")
    removed = []
    if not directory.parent.is_dir():
        return removed
    for path in directory.parent.iterdir():
        if not (pattern.fullmatch(path.name) and path.is_dir() and not path.is_symlink()):
            continue
        if {child.name for child in path.iterdir()} <= CHECKPOINT_FILES:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    if removed:
        logger.info("removed %d temporary folder(s) of interrupted saves of %s", len(removed), directory)
    return removed


def save_draft(draft: DraftModel, directory, extra: dict | None = None, dtype: torch.dtype | None = None,
               state_dict: dict | None = None) -> Path:
    """Save ``draft`` to ``directory`` (created, or atomically replaced when it holds a draft checkpoint;
    BeagleError when it holds other files or is a symbolic link). ``extra`` is merged into
    ``config.training`` (e.g. evaluation results). ``dtype`` optionally casts the stored weights.
    ``state_dict``: the weights to store instead of ``draft.state_dict()`` (e.g. gathered from FSDP shards)."""
    directory = destination_path(directory, "the draft folder")
    check_replaceable(directory, "the draft folder")
    config = draft.config
    if extra:
        config.training = {**config.training, **extra}
    remove_legacy_temporaries(directory)
    with atomic_folder(directory, "the draft folder") as temporary:
        tensors = {
            name: (tensor.to(dtype) if dtype is not None else tensor).detach().contiguous().cpu()
            for name, tensor in (state_dict if state_dict is not None else draft.state_dict()).items()
        }
        save_file(tensors, str(temporary / WEIGHTS_NAME), metadata={"format": "pt", "arch": config.arch})
        if draft.vocab is not None:
            draft.vocab.save(temporary / VOCAB_FILE_NAME)
        config.save(temporary / CONFIG_NAME)
    logger.info("saved %s draft to %s", config.arch, directory)
    return directory


def inference_draft_dtype(target) -> torch.dtype:
    """The dtype a draft drafts fastest in next to ``target``: bfloat16 beside a float32 target on a CPU whose
    oneDNN runs bf16 natively (AVX512-BF16 / AMX) with the oneDNN linear kernel (half the bytes per draft
    step; measured in docs/results/cpu-paths.md), else the target's dtype. Output stays the target's either
    way: the draft only proposes; the float32 target verifies. The kernels are the target's
    (``target.cpu_kernels``, chosen by ``load_target``)."""
    kernels = getattr(target, "cpu_kernels", None)
    if (target.device.type == "cpu" and target.dtype == torch.float32 and kernels is not None
            and kernels.drafts_in_bf16):
        return torch.bfloat16
    return target.dtype


def load_draft(directory, target=None, device=None, dtype=None) -> DraftModel:
    """Load a draft; when ``target`` is given, check it fits and bind the shared embedding / LM head.

    ``directory``: a checkpoint folder, or the name of a draft shipped in the repository
    (``smollm2-beagle``, ``smollm2-eagle2``). device/dtype default to the target's (or CPU / float32
    without a target); ``dtype="auto"`` takes :func:`inference_draft_dtype` (needs ``target``).
    """
    directory = shipped.resolve_draft_path(directory)
    if not (directory / CONFIG_NAME).is_file() or not (directory / WEIGHTS_NAME).is_file():
        raise BeagleError(
            f"{directory} is not a draft checkpoint (needs {CONFIG_NAME} and {WEIGHTS_NAME}); "
            "train one with `beagle train` or pass the folder it wrote"
        )
    config = DraftConfig.load(directory / CONFIG_NAME)
    if target is not None:
        config.check_target(target.fingerprint())
        config.check_target_weights(target.weights_fingerprint(), where=f"the draft in {directory}",
                                    quiet=_is_shipped(directory))
    vocab = read_checkpoint_vocab(directory, config)
    draft = draft_class(config.arch)(config)
    try:
        state = load_file(str(directory / WEIGHTS_NAME))
    except (SafetensorError, OSError) as error:
        raise BeagleError(f"cannot read the draft weights {directory / WEIGHTS_NAME}: the file is damaged or "
                          f"incomplete ({error}); copy the draft again or retrain it") from None
    try:
        missing, unexpected = draft.load_state_dict(state, strict=False)
    except RuntimeError as error:  # tensor shapes that do not match config.json
        raise BeagleError(f"draft checkpoint {directory}: the weights do not match its config.json "
                          f"({str(error).splitlines()[-1].strip()})") from None
    if missing or unexpected:
        raise BeagleError(
            f"draft checkpoint {directory} does not match a {config.arch} draft "
            f"(missing: {missing[:4]}, unexpected: {unexpected[:4]})"
        )
    device = device or (target.device if target is not None else "cpu")
    if isinstance(dtype, str):
        dtype = _draft_dtype(dtype, target)
    dtype = dtype or (target.dtype if target is not None else torch.float32)
    draft = draft.to(device=device, dtype=dtype).eval()
    draft.set_vocab(vocab)
    if target is not None:
        draft.bind_target(target)
    return draft


DRAFT_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _draft_dtype(name: str, target) -> torch.dtype | None:
    if name == "auto":
        return inference_draft_dtype(target) if target is not None else None
    if name not in DRAFT_DTYPES:
        raise BeagleError(f"unknown draft dtype {name!r}; use auto, {', '.join(DRAFT_DTYPES)}")
    return DRAFT_DTYPES[name]


def _is_shipped(directory: Path) -> bool:
    """A draft shipped in the repository (drafts/). They record the target-weights fingerprint (a mismatch is
    refused like any other); only a missing fingerprint would be logged at INFO for them."""
    try:
        return Path(directory).resolve().is_relative_to(shipped.DRAFTS_DIR.resolve())
    except OSError:
        return False


def read_checkpoint_vocab(directory, config: DraftConfig) -> DraftVocab | None:
    """The draft vocabulary stored in a checkpoint folder (None when ``config.draft_vocab_size`` is unset);
    BeagleError when the file is missing, malformed or disagrees with the config."""
    if config.draft_vocab_size is None:
        return None
    path = Path(directory) / VOCAB_FILE_NAME
    if not path.is_file():
        raise BeagleError(f"draft {directory} declares a {config.draft_vocab_size}-token draft vocabulary but has no "
                          f"{VOCAB_FILE_NAME}; copy it back or remove draft_vocab_size from its {CONFIG_NAME}")
    vocab = DraftVocab.load(path)
    if vocab.size != config.draft_vocab_size:
        raise BeagleError(f"{path} holds {vocab.size} ids but {CONFIG_NAME} says draft_vocab_size "
                          f"{config.draft_vocab_size}")
    return vocab.check(config.vocab_size, config.target.get("name"))


def build_draft(target, arch: str, num_key_value_heads: int | None = None,
                last_state_skip: bool = False) -> DraftModel:
    """A freshly initialised draft of ``arch`` shaped for ``target`` and bound to it (with its own number of
    key/value heads when ``num_key_value_heads`` is given; default: the target's; with Beagle's last-state
    skip when ``last_state_skip``); its config records the target's shapes and a fingerprint of its
    embedding / LM-head weights."""
    fingerprint = {**target.fingerprint(), "weights": target.weights_fingerprint()}
    config = DraftConfig.from_target(target.config, arch, fingerprint, num_key_value_heads)
    config.last_state_skip = last_state_skip
    draft = draft_class(arch)(config)
    _init_weights(draft, getattr(target.config, "initializer_range", 0.02))
    return draft.to(device=target.device, dtype=torch.float32).bind_target(target)


def _init_weights(draft: DraftModel, std: float) -> None:
    for module in draft.modules():
        if isinstance(module, torch.nn.Linear):
            torch.nn.init.normal_(module.weight, std=std)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
    for module in draft.zero_initialised():
        torch.nn.init.zeros_(module.weight)
