"""Beagle: cross-attention speculative decoding.

Public API (lazy, so ``import beagle`` is cheap)::

    from beagle import load_target, BeagleDraft, Eagle2Draft, load_draft, SpeculativeGenerator
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "load_target": "beagle.target_model.model",
    "TargetModel": "beagle.target_model.model",
    "BeagleDraft": "beagle.models.beagle.model",
    "Eagle2Draft": "beagle.models.eagle2.model",
    "DraftConfig": "beagle.models.config",
    "load_draft": "beagle.models.checkpoint",
    "SpeculativeGenerator": "beagle.decoding.engine",
    "GenerationSettings": "beagle.decoding.sampling",
    "TreeSettings": "beagle.decoding.tree",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'beagle' has no attribute {name!r}")
