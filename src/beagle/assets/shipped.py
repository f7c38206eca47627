"""Drafts shipped in the repository (trained on GPU, stored as bf16 safetensors under ``drafts/``)."""

from __future__ import annotations

from pathlib import Path

# src/beagle/assets/shipped.py -> repository root / drafts
DRAFTS_DIR = Path(__file__).resolve().parents[3] / "drafts"

SHIPPED = {
    "smollm2-beagle": "smollm2-beagle",
    "smollm2-eagle2": "smollm2-eagle2",
}


def resolve_draft_path(name_or_path) -> Path:
    """A shipped draft name -> its folder; anything else (a checkpoint folder) unchanged."""
    if str(name_or_path) in SHIPPED and not Path(name_or_path).exists():
        return shipped_draft_path(str(name_or_path)) or Path(name_or_path)
    return Path(name_or_path)


def shipped_draft_path(name: str) -> Path | None:
    """Folder of a shipped draft by name, or None when ``name`` is not one (or is not present)."""
    folder = SHIPPED.get(name)
    if folder is None:
        return None
    path = DRAFTS_DIR / folder
    return path if (path / "config.json").is_file() else None
