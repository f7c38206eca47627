"""Draft checkpoints: ``config.json`` (architecture, dims, target fingerprint) + ``model.safetensors``,
plus ``draft_vocab.safetensors`` when the draft has a draft vocabulary (:mod:`beagle.vocab`; the config's
``draft_vocab_size`` says so, and a draft without one keeps using the target's full vocabulary).

Writes are atomic: files go to a temporary sibling folder (``.<name>.XXXXXXXX``) that replaces the
destination with ``os.replace`` only once complete, so a crash mid-save leaves the previous checkpoint
intact; temporaries a killed save left behind are removed by the next save. The folder and files get
the modes of newly created ones (umask), not the 0700 / 0600 of temporary files. The shared target
embedding / LM head are never stored; ``config.json`` records a fingerprint of them, checked on load.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from beagle.errors import BeagleError
from beagle.files import give_default_mode
from beagle.models.base import DraftModel, draft_class
from beagle.models.config import DraftConfig
from beagle.vocab.core import VOCAB_FILE_NAME, DraftVocab

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def replace_directory(temporary: Path, destination: Path) -> None:
    """Atomically move a finished folder into place (keeping the old one as ``<name>.old`` until the swap)."""
    destination = Path(destination)
    backup = destination.with_name(destination.name + ".old")
    if destination.exists():
        if backup.exists():
            shutil.rmtree(backup)
        os.replace(destination, backup)
        os.replace(temporary, destination)
        shutil.rmtree(backup)
    else:
        os.replace(temporary, destination)
        if backup.exists():  # a save killed between its two renames
            shutil.rmtree(backup, ignore_errors=True)


def remove_stale_temporaries(directory: Path) -> list[Path]:
    """Delete the ``.<name>.XXXXXXXX`` temporary folders that killed saves of ``directory`` left beside it
    (only folders holding nothing but checkpoint files). Returns what was removed."""
    directory = Path(directory)
    pattern = re.compile(r"\." + re.escape(directory.name) + r"\.[a-z0-9_]{8}")
    removed = []
    if not directory.parent.is_dir():
        return removed
    for path in directory.parent.iterdir():
        if not (pattern.fullmatch(path.name) and path.is_dir() and not path.is_symlink()):
            continue
        if {child.name for child in path.iterdir()} <= {CONFIG_NAME, WEIGHTS_NAME}:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    if removed:
        logger.info("removed %d temporary folder(s) of interrupted saves of %s", len(removed), directory)
    return removed


def save_draft(draft: DraftModel, directory, extra: dict | None = None, dtype: torch.dtype | None = None,
               state_dict: dict | None = None) -> Path:
    """Save ``draft`` to ``directory`` (created or atomically replaced). ``extra`` is merged into
    ``config.training`` (e.g. evaluation results). ``dtype`` optionally casts the stored weights.
    ``state_dict``: the weights to store instead of ``draft.state_dict()`` (e.g. gathered from FSDP shards)."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    config = draft.config
    if extra:
        config.training = {**config.training, **extra}
    remove_stale_temporaries(directory)
    temporary = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        tensors = {
            name: (tensor.to(dtype) if dtype is not None else tensor).detach().contiguous().cpu()
            for name, tensor in (state_dict if state_dict is not None else draft.state_dict()).items()
        }
        save_file(tensors, str(temporary / WEIGHTS_NAME), metadata={"format": "pt", "arch": config.arch})
        if draft.vocab is not None:
            draft.vocab.save(temporary / VOCAB_FILE_NAME)
        config.save(temporary / CONFIG_NAME)
        for path in (temporary / WEIGHTS_NAME, temporary / CONFIG_NAME, temporary):
            give_default_mode(path)  # safetensors writes 0600, mkdtemp makes 0700
        replace_directory(temporary, directory)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
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
    from beagle.assets.shipped import resolve_draft_path

    directory = resolve_draft_path(directory)
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
    """A draft shipped in the repository (drafts/): trained before weight fingerprints were recorded."""
    from beagle.assets.shipped import DRAFTS_DIR

    try:
        return Path(directory).resolve().is_relative_to(DRAFTS_DIR.resolve())
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


def build_draft(target, arch: str, num_key_value_heads: int | None = None) -> DraftModel:
    """A freshly initialised draft of ``arch`` shaped for ``target`` and bound to it (with its own number of
    key/value heads when ``num_key_value_heads`` is given; default: the target's); its config records the
    target's shapes and a fingerprint of its embedding / LM-head weights."""
    fingerprint = {**target.fingerprint(), "weights": target.weights_fingerprint()}
    config = DraftConfig.from_target(target.config, arch, fingerprint, num_key_value_heads)
    draft = draft_class(arch)(config)
    _init_weights(draft, getattr(target.config, "initializer_range", 0.02))
    return draft.to(device=target.device, dtype=torch.float32).bind_target(target)


def _init_weights(draft: DraftModel, std: float) -> None:
    for module in draft.modules():
        if isinstance(module, torch.nn.Linear):
            torch.nn.init.normal_(module.weight, std=std)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
