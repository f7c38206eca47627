"""Settings of the training objectives, torch-free (the registry and ``beagle train --help`` read them):
an architecture's :class:`LossDefaults` and the :class:`ObjectiveSettings` its objective factory is given."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LossDefaults:
    """An architecture's default loss weights and input noise (its std, ``noise_std``, is shared).

    ce_weight: soft cross-entropy weight; vloss_weight: feature-regression (SmoothL1) weight; noise: the
    kind of noise added to the target states it reads in training (``gaussian``, ``uniform`` or ``none``).
    """

    ce_weight: float
    vloss_weight: float
    noise: str


@dataclass
class ObjectiveSettings:
    """window: stage-1 block size k. sim_steps: stage-2 simulated steps s. stage2_window: stage-2 block
    size (default s). ttt_steps: unrolled training-time-test steps (1 = none). ce_weight / vloss_weight /
    noise: None = the architecture's defaults (its registration's ``loss_defaults``); noise_std 0.2.
    ttt_decay: EAGLE-3's per-step loss decay. first_position_weight: Beagle's weight of window position 1 (the
    next-token prediction) relative to the later positions, in both stages (1: the paper's). loss_chunk: rows per checkpointed chunk of the LM-head
    losses (None: all at once; see :func:`~beagle.models.losses.position_losses`)."""

    window: int = 5
    sim_steps: int = 4
    stage2_window: int | None = None
    ttt_steps: int = 1
    ce_weight: float | None = None
    vloss_weight: float | None = None
    noise: str | None = None
    noise_std: float = 0.2
    ttt_decay: float = 0.8
    first_position_weight: float = 1.0
    loss_chunk: int | None = None

    def resolved(self, defaults: LossDefaults) -> "ObjectiveSettings":
        """These settings with every default filled in (``defaults``: the architecture's loss defaults)."""
        return ObjectiveSettings(
            window=self.window,
            sim_steps=self.sim_steps,
            stage2_window=self.stage2_window or self.sim_steps,
            ttt_steps=max(1, self.ttt_steps),
            ce_weight=defaults.ce_weight if self.ce_weight is None else self.ce_weight,
            vloss_weight=defaults.vloss_weight if self.vloss_weight is None else self.vloss_weight,
            noise=self.noise or defaults.noise,
            noise_std=self.noise_std,
            ttt_decay=self.ttt_decay,
            first_position_weight=self.first_position_weight,
            loss_chunk=self.loss_chunk,
        )
