"""EAGLE-2: the baseline draft, fc(2d→d) over [token embedding; previous feature] and one self-attention layer.

- :mod:`beagle.models.eagle2.model`: :class:`~beagle.models.eagle2.model.Eagle2Draft`;
- :mod:`beagle.models.eagle2.objective`: its loss (with EAGLE-3's training-time test, ``--ttt-steps``) and
  the simulated acceptance; :mod:`beagle.models.eagle2.masks`: their masks.

This module only registers the architecture (no torch): the rest loads on first use.
"""

from beagle.models.registry import Architecture, register
from beagle.models.settings import LossDefaults

ARCHITECTURE = register(Architecture(
    name="eagle2",
    summary="fc + one self-attention layer (the EAGLE-2 baseline)",
    model="beagle.models.eagle2.model:Eagle2Draft",
    objective="beagle.models.eagle2.objective:make_objective",
    acceptance="beagle.models.eagle2.objective:simulated_acceptance",
    # SmoothL1 1.0 + soft CE 0.1 and uniform input noise, as EAGLE's main.py (the same ratio as Beagle's).
    loss_defaults=LossDefaults(ce_weight=0.1, vloss_weight=1.0, noise="uniform"),
    stages=1,
    options=("ttt_steps",),
    parameter_note="""\
eagle2: the same layer + fc(2d→d, bias) + 1 RMSNorm
        = d·H·hd + 2·d·KV·hd + H·hd·d + 3·d·I + 2d² + 2d   (≈ 236M for a LLaMA-2-7B target)""",
    schedule_note="""\
eagle2 trains the same total number of epochs with its own loss (EAGLE-3-style TTT with --ttt-steps).""",
))
