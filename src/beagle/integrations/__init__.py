"""Integrations with other inference engines: :mod:`beagle.integrations.export` (draft layouts, no extra
dependency) and :mod:`beagle.integrations.vllm` (the vLLM plugin; vLLM is imported only when it is used)."""
