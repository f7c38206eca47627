"""Draft models: the interface (:mod:`~beagle.models.base`), the architecture registry
(:mod:`~beagle.models.registry`), checkpoints, the training contract (:mod:`~beagle.models.objective`), and
one package per architecture. Importing this package registers the architectures (their packages'
``__init__`` hold only the registration; models and objectives load on first use).
"""

from beagle.models import beagle as _beagle  # noqa: F401  (registers the architecture)
from beagle.models import eagle2 as _eagle2  # noqa: F401
