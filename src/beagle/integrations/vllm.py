"""vLLM plugin: registers the Beagle draft with vLLM's model registry.

Installed as the ``vllm.general_plugins`` entry point ``beagle`` (pyproject.toml), so every vLLM process
(engine core, workers, ``vllm serve``) calls :func:`register` at start-up once the ``beagle-decoding``
package is installed in vLLM's environment. This module imports nothing from vLLM at import time; the
model class lives in :mod:`beagle.integrations.vllm_model` and is imported lazily by vLLM itself.

Serve an exported draft (``beagle export --format vllm DRAFT OUT``) with::

    vllm serve TARGET --speculative-config '{"method": "eagle", "model": "OUT", "num_speculative_tokens": 4}'

For ``method: "eagle"`` vLLM resolves the draft config's architecture ``BeagleDraftForCausalLM`` as
``EagleBeagleDraftForCausalLM``; both names point at the same class. EAGLE-2 exports need no plugin
(they use vLLM's own ``EagleLlamaForCausalLM``).
"""

from __future__ import annotations

MODEL_CLASS = "beagle.integrations.vllm_model:BeagleDraftForCausalLM"
ARCHITECTURES = ("BeagleDraftForCausalLM", "EagleBeagleDraftForCausalLM")


def register() -> None:
    """Register the Beagle draft's architectures with vLLM (idempotent; a no-op message if vLLM is absent)."""
    try:
        from vllm import ModelRegistry
    except ImportError as error:  # called outside a vLLM environment
        raise ImportError("beagle.integrations.vllm.register() needs vLLM installed "
                          "(see docs/vllm.md: .ci/vllm builds such an environment)") from error
    supported = set(ModelRegistry.get_supported_archs())
    for arch in ARCHITECTURES:
        if arch not in supported:
            ModelRegistry.register_model(arch, MODEL_CLASS)
