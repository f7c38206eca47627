"""The draft architectures, each registered once by its own package (``beagle/models/<name>/__init__.py``).

An :class:`Architecture` says everything the rest of Beagle needs to know of a draft architecture, so the
trainer, the checkpoints and ``beagle train`` never name one:

- ``model``: its :class:`~beagle.models.base.DraftModel` subclass (built by checkpoints, proposes in decoding);
- ``objective``: its training objective for a training stage, ``(stage, ObjectiveSettings) -> objective``
  (see :mod:`beagle.models.objective` for the contract);
- ``acceptance``: its simulated-acceptance rule on held-out data, ``(draft, batch, depth) -> (accepted,
  counted)`` per draft position (what the trainer evaluates after each epoch);
- ``stages`` (training stages: 1, or 2 when ``--epochs-stage1`` and ``--epochs-stage2`` train different
  objectives), ``loss_defaults`` (CE / feature-regression weights and input noise), ``options`` (training
  options only this architecture reads, refused with another), and the notes ``beagle train --help`` shows.

``model``, ``objective`` and ``acceptance`` are references ``"module:attribute"`` inside the architecture's
package, imported on first use (as Python entry points are): registering and listing architectures
(``beagle train --help``) then imports no torch, and this module imports no draft.

Adding an architecture: a package ``beagle/models/<name>/`` whose ``__init__.py`` calls :func:`register`,
and one import line in ``beagle/models/__init__.py`` (importing :mod:`beagle.models` registers them all).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from beagle.errors import BeagleError
from beagle.models.settings import LossDefaults, ObjectiveSettings

if TYPE_CHECKING:
    from beagle.models.base import DraftModel

_ARCHITECTURES: dict[str, "Architecture"] = {}
_RESOLVED: dict[str, Any] = {}


@dataclass(frozen=True)
class Architecture:
    """One draft architecture (see the module docstring). ``default``: the ``--arch`` of ``beagle train``
    when none is given (exactly one architecture says so)."""

    name: str
    summary: str
    model: str
    objective: str
    acceptance: str
    loss_defaults: LossDefaults
    stages: int = 1
    options: tuple[str, ...] = ()
    default: bool = False
    parameter_note: str = ""
    schedule_note: str = ""

    def model_class(self) -> type["DraftModel"]:
        """The DraftModel subclass (its ``arch`` attribute is this architecture's name)."""
        cls = _resolve(self.model)
        if getattr(cls, "arch", None) != self.name:
            raise BeagleError(f"{self.model} is registered as the {self.name!r} draft but says arch {cls.arch!r}")
        return cls

    def make_objective(self, stage: int, settings: ObjectiveSettings):
        """The training objective of stage ``stage`` (1-based; architectures of one stage ignore it)."""
        return _resolve(self.objective)(stage, settings)

    def simulated_acceptance(self, draft, batch, depth: int, top_k: int = 1):
        """Greedy acceptance by draft position on held-out ``batch``: (accepted [depth], counted [depth]);
        ``top_k`` > 1 accepts a step when the target's token is among the draft's top-k there."""
        return _resolve(self.acceptance)(draft, batch, depth, top_k=top_k)

    def stage_of(self, epoch: int, epochs_stage1: int) -> int:
        """The training stage (1 or 2) of 0-based ``epoch``: stage 2 after ``epochs_stage1`` epochs when the
        architecture has two stages, else always 1."""
        return 2 if self.stages == 2 and epoch >= epochs_stage1 else 1


def _resolve(reference: str):
    if reference not in _RESOLVED:
        module, _, attribute = reference.partition(":")
        _RESOLVED[reference] = getattr(importlib.import_module(module), attribute)
    return _RESOLVED[reference]


def register(architecture: Architecture) -> Architecture:
    """Add ``architecture`` (called by its package's ``__init__``); returns it."""
    known = _ARCHITECTURES.get(architecture.name)
    if known is not None and known != architecture:
        raise BeagleError(f"two draft architectures are registered as {architecture.name!r}")
    if architecture.default and any(other.default for other in _ARCHITECTURES.values() if other is not known):
        raise BeagleError(f"{architecture.name!r} and {default_name()!r} both claim to be the default architecture")
    if architecture.stages not in (1, 2):
        raise BeagleError(f"architecture {architecture.name!r}: stages must be 1 or 2, not {architecture.stages}")
    _ARCHITECTURES[architecture.name] = architecture
    return architecture


def names() -> tuple[str, ...]:
    """The registered architectures' names, in registration order."""
    return tuple(_ARCHITECTURES)


def architectures() -> tuple[Architecture, ...]:
    return tuple(_ARCHITECTURES.values())


def architecture(name: str) -> Architecture:
    """The architecture called ``name``; BeagleError naming the known ones otherwise."""
    if name not in _ARCHITECTURES:
        raise BeagleError(f"unknown draft architecture {name!r}; choose one of {', '.join(names())}")
    return _ARCHITECTURES[name]


def default_name() -> str:
    """The architecture ``beagle train`` trains when no ``--arch`` is given."""
    defaults = [name for name, value in _ARCHITECTURES.items() if value.default]
    if len(defaults) != 1:
        raise BeagleError(f"exactly one draft architecture must be the default (found {defaults})")
    return defaults[0]


def taking_option(option: str) -> tuple[str, ...]:
    """The architectures that read training option ``option`` (a TrainConfig field in their ``options``)."""
    return tuple(name for name, value in _ARCHITECTURES.items() if option in value.options)


def draft_class(name: str) -> type["DraftModel"]:
    """The DraftModel subclass of architecture ``name``."""
    return architecture(name).model_class()


def make_objective(name: str, stage: int, settings: ObjectiveSettings):
    """The training objective of architecture ``name`` for training stage ``stage``."""
    return architecture(name).make_objective(stage, settings)
