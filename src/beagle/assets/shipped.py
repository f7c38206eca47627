"""Drafts shipped in the repository (trained on GPU, stored as bf16 safetensors under ``drafts/``), and draft
vocabularies for their target (``drafts/<name>.safetensors``, :mod:`beagle.vocab`)."""

from __future__ import annotations

from pathlib import Path

# src/beagle/assets/shipped.py -> repository root / drafts
DRAFTS_DIR = Path(__file__).resolve().parents[3] / "drafts"

SHIPPED = {
    "smollm2-beagle": "smollm2-beagle",
    "smollm2-eagle2": "smollm2-eagle2",
}

# SmolLM2's 8192 most frequent assistant tokens of the first 6000 ShareGPT training conversations
# (`beagle vocab --target smollm2 --data sharegpt --limit 6000 --size 8192`; docs/results/cpu-vocab-sweep.md).
SHIPPED_VOCABS = {
    "smollm2-vocab-8192": "smollm2-vocab-8192.safetensors",
}


def resolve_vocab_path(name_or_path) -> Path:
    """A shipped vocabulary name -> its file; anything else (a vocabulary file) unchanged."""
    name = str(name_or_path)
    if name in SHIPPED_VOCABS and not Path(name).exists():
        return DRAFTS_DIR / SHIPPED_VOCABS[name]
    return Path(name_or_path)


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
