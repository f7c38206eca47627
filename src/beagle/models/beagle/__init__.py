"""Beagle: the paper's draft, one cross-attention block over the target's states.

- :mod:`beagle.models.beagle.model`: :class:`~beagle.models.beagle.model.BeagleDraft` (Eq. 1–2);
- :mod:`beagle.models.beagle.objective`: stage 1 (multi-token prediction, inverse block mask), stage 2
  (training-time simulation) and the simulated acceptance; :mod:`beagle.models.beagle.masks`: their masks.

This module only registers the architecture (no torch): the rest loads on first use.
"""

from beagle.models.registry import Architecture, register
from beagle.models.settings import LossDefaults

ARCHITECTURE = register(Architecture(
    name="beagle",
    summary="one cross-attention block over the target's states (the paper's draft)",
    model="beagle.models.beagle.model:BeagleDraft",
    objective="beagle.models.beagle.objective:make_objective",
    acceptance="beagle.models.beagle.objective:simulated_acceptance",
    # CE 1 : feature regression 10 and Gaussian input noise (paper §2.2).
    loss_defaults=LossDefaults(ce_weight=1.0, vloss_weight=10.0, noise="gaussian"),
    stages=2,
    options=("last_state_skip", "first_position_weight"),
    default=True,
    parameter_note="""\
beagle: q,k,v,o projections + SwiGLU MLP + 3 RMSNorms
        = d·H·hd + 2·d·KV·hd + H·hd·d + 3·d·I + 3·d       (≈ 202M for a LLaMA-2-7B target)
        (--last-state-skip: + d² + d)""",
    schedule_note="""\
beagle trains --epochs-stage1 epochs of multi-token prediction (inverse block mask, window --window) then
--epochs-stage2 epochs of training-time simulation (--sim-steps steps, constant memory).""",
))
