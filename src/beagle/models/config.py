"""Draft configuration: the draft's shapes (mirroring the target's attention) and the target fingerprint."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

from beagle.errors import BeagleError, IncompatibleDraftError
from beagle.models.registry import architecture

logger = logging.getLogger(__name__)


@dataclass
class DraftConfig:
    """Shapes of a one-layer draft. Built from a target config with :meth:`from_target`.

    arch: the name of a registered architecture (:mod:`beagle.models.registry`).
    target: fingerprint of the target (name, model_type, vocab_size, hidden_size, num_hidden_layers, and
    ``weights``: a fingerprint of its embedding / LM head, see :mod:`beagle.target_model.fingerprint`).
    draft_vocab_size / draft_vocab_coverage: N and the coverage of the draft vocabulary stored next to the
    weights (``draft_vocab.safetensors``, see :mod:`beagle.vocab`); None = the target's full vocabulary.
    last_state_skip: Beagle's last-state skip (:mod:`beagle.models.beagle.model`); False for EAGLE-2.
    """

    arch: str
    hidden_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    rms_norm_eps: float = 1e-6
    rope_parameters: dict = field(default_factory=lambda: {"rope_type": "default", "rope_theta": 10000.0})
    max_position_embeddings: int = 4096
    attention_bias: bool = False
    target: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)
    draft_vocab_size: int | None = None
    draft_vocab_coverage: float | None = None
    last_state_skip: bool = False  # Beagle: W·norm(newest visible state) added to the residual (beyond the paper)

    def __post_init__(self):
        architecture(self.arch)  # BeagleError for an unknown one
        if self.num_attention_heads % self.num_key_value_heads:
            raise BeagleError(
                f"num_attention_heads={self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads={self.num_key_value_heads}"
            )

    @classmethod
    def from_target(cls, target_config, arch: str, fingerprint: dict | None = None,
                    num_key_value_heads: int | None = None) -> "DraftConfig":
        """Mirror the target's attention shape (heads, KV heads, head dim, RoPE) and MLP width.

        ``num_key_value_heads`` gives the draft its own number of key/value heads instead of the target's
        (a divisor of the head count; with all heads, each value projection keeps every state dimension).
        """
        heads = target_config.num_attention_heads
        head_dim = getattr(target_config, "head_dim", None) or target_config.hidden_size // heads
        if num_key_value_heads is not None and (num_key_value_heads < 1 or heads % num_key_value_heads):
            raise BeagleError(f"the draft's key/value heads ({num_key_value_heads}) must divide the target's "
                              f"{heads} attention heads")
        return cls(
            arch=arch,
            hidden_size=target_config.hidden_size,
            num_attention_heads=heads,
            num_key_value_heads=num_key_value_heads or getattr(target_config, "num_key_value_heads", None) or heads,
            head_dim=head_dim,
            intermediate_size=target_config.intermediate_size,
            vocab_size=target_config.vocab_size,
            rms_norm_eps=getattr(target_config, "rms_norm_eps", 1e-6),
            rope_parameters=_rope_parameters(target_config),
            max_position_embeddings=getattr(target_config, "max_position_embeddings", 4096),
            target=dict(fingerprint or {}),
        )

    def to_dict(self) -> dict:
        return asdict(self)

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: Path) -> "DraftConfig":
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError, RecursionError) as error:
            raise BeagleError(f"cannot read draft config {path}: {error}") from None
        if not isinstance(data, dict):
            raise BeagleError(f"draft config {path} is not a JSON object")
        known = {name for name in cls.__dataclass_fields__}
        try:
            return cls(**{key: value for key, value in data.items() if key in known})
        except TypeError as error:  # a required field missing
            raise BeagleError(f"draft config {path} is incomplete ({error}); it is not a Beagle draft") from None

    def check_target(self, fingerprint: dict) -> None:
        """Raise IncompatibleDraftError when the target's shapes differ from the ones trained for."""
        mismatches = [
            f"{key}: draft expects {self.target.get(key)}, target has {fingerprint.get(key)}"
            for key in ("vocab_size", "hidden_size", "num_hidden_layers")
            if self.target.get(key) is not None and self.target.get(key) != fingerprint.get(key)
        ]
        if fingerprint.get("hidden_size") not in (None, self.hidden_size):
            mismatches.append(f"hidden_size: draft width {self.hidden_size}, target {fingerprint.get('hidden_size')}")
        if mismatches:
            raise IncompatibleDraftError(
                f"draft trained for target {self.target.get('name')!r} does not fit target "
                f"{fingerprint.get('name')!r} ({'; '.join(dict.fromkeys(mismatches))}). "
                "Train a draft for this target with `beagle train`, or pass the matching --target."
            )

    def check_target_weights(self, weights: dict, where: str = "this draft", quiet: bool = False) -> None:
        """Raise IncompatibleDraftError when the target's embedding / LM-head fingerprint (``weights``, from
        :meth:`~beagle.target_model.model.TargetModel.weights_fingerprint`) is not the one the draft was trained
        with. Drafts saved before fingerprints were recorded load with a log line (INFO when ``quiet``)."""
        from beagle.target_model.fingerprint import same_weights

        recorded = self.target.get("weights")
        if recorded is None:
            logger.log(logging.INFO if quiet else logging.WARNING,
                       "%s records no fingerprint of its target's weights (saved by an older Beagle): only the "
                       "shapes were checked against the target", where)
            return
        verdict = same_weights(recorded, weights)
        if verdict is None:
            logger.warning("%s records a target-weights fingerprint this Beagle cannot read; not checked", where)
        elif not verdict:
            raise IncompatibleDraftError(
                f"{where} was trained for a target with other weights: {self.target.get('name')!r} and this target "
                "have the same shapes but different embedding / LM-head weights (fingerprint mismatch). Pass the "
                "target it was trained for, or train a draft for this target with `beagle train`."
            )


def _rope_parameters(config) -> dict:
    parameters = getattr(config, "rope_parameters", None)
    if isinstance(parameters, dict) and parameters:
        out = dict(parameters)
    else:  # older configs: rope_theta + rope_scaling
        out = dict(getattr(config, "rope_scaling", None) or {})
        out.setdefault("rope_theta", getattr(config, "rope_theta", 10000.0))
    out.setdefault("rope_type", out.pop("type", "default") if "type" in out else "default")
    return {key: value for key, value in out.items()}
