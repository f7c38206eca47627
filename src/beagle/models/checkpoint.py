"""Draft checkpoints: ``config.json`` (architecture, dims, target fingerprint) + ``model.safetensors``.

Writes are atomic: files go to a temporary sibling folder that replaces the destination
with ``os.replace`` only once complete, so a crash mid-save leaves the previous checkpoint intact.
The shared target embedding / LM head are never stored.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from beagle.errors import BeagleError
from beagle.models.base import DraftModel, draft_class
from beagle.models.config import DraftConfig

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def replace_directory(temporary: Path, destination: Path) -> None:
    """Atomically move a finished folder into place (keeping the old one until the swap)."""
    destination = Path(destination)
    if destination.exists():
        backup = destination.with_name(destination.name + ".old")
        if backup.exists():
            shutil.rmtree(backup)
        os.replace(destination, backup)
        os.replace(temporary, destination)
        shutil.rmtree(backup)
    else:
        os.replace(temporary, destination)


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
    temporary = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        tensors = {
            name: (tensor.to(dtype) if dtype is not None else tensor).detach().contiguous().cpu()
            for name, tensor in (state_dict if state_dict is not None else draft.state_dict()).items()
        }
        save_file(tensors, str(temporary / WEIGHTS_NAME), metadata={"format": "pt", "arch": config.arch})
        config.save(temporary / CONFIG_NAME)
        replace_directory(temporary, directory)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    logger.info("saved %s draft to %s", config.arch, directory)
    return directory


def load_draft(directory, target=None, device=None, dtype=None) -> DraftModel:
    """Load a draft; when ``target`` is given, check it fits and bind the shared embedding / LM head.

    ``directory``: a checkpoint folder, or the name of a draft shipped in the repository
    (``smollm2-beagle``, ``smollm2-eagle2``). device/dtype default to the target's (or CPU / float32
    without a target).
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
    draft = draft_class(config.arch)(config)
    state = load_file(str(directory / WEIGHTS_NAME))
    missing, unexpected = draft.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise BeagleError(
            f"draft checkpoint {directory} does not match a {config.arch} draft "
            f"(missing: {missing[:4]}, unexpected: {unexpected[:4]})"
        )
    device = device or (target.device if target is not None else "cpu")
    dtype = dtype or (target.dtype if target is not None else torch.float32)
    draft = draft.to(device=device, dtype=dtype).eval()
    if target is not None:
        draft.bind_target(target)
    return draft


def build_draft(target, arch: str, num_key_value_heads: int | None = None) -> DraftModel:
    """A freshly initialised draft of ``arch`` shaped for ``target`` and bound to it (with its own number of
    key/value heads when ``num_key_value_heads`` is given; default: the target's)."""
    config = DraftConfig.from_target(target.config, arch, target.fingerprint(), num_key_value_heads)
    draft = draft_class(arch)(config)
    _init_weights(draft, getattr(target.config, "initializer_range", 0.02))
    return draft.to(device=target.device, dtype=torch.float32).bind_target(target)


def _init_weights(draft: DraftModel, std: float) -> None:
    for module in draft.modules():
        if isinstance(module, torch.nn.Linear):
            torch.nn.init.normal_(module.weight, std=std)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
