"""Generation settings and the target's token choice (greedy or sampled), named as in ``GenerationConfig``."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from beagle.errors import BeagleError


@dataclass
class GenerationSettings:
    """max_new_tokens ≥ 1; temperature 0 = greedy; top_p in (0, 1]; top_k 0 = off; stop: stop strings."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    ignore_eos: bool = False

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def validate(self) -> "GenerationSettings":
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise BeagleError(f"max_new_tokens must be a positive integer, got {self.max_new_tokens!r}")
        if self.temperature < 0:
            raise BeagleError(f"temperature must be ≥ 0 (0 = greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise BeagleError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise BeagleError(f"top_k must be ≥ 0 (0 = off), got {self.top_k}")
        return self


def target_probabilities(logits: torch.Tensor, settings: GenerationSettings) -> torch.Tensor:
    """The target's sampling distribution: temperature, then top-k, then top-p (HF's warper order).

    logits: [N, V] float32 -> probabilities [N, V].
    """
    scores = logits / settings.temperature
    if settings.top_k and settings.top_k < scores.shape[-1]:
        threshold = torch.topk(scores, settings.top_k, dim=-1).values[..., -1:]
        scores = scores.masked_fill(scores < threshold, float("-inf"))
    if settings.top_p < 1.0:
        sorted_scores, order = torch.sort(scores, dim=-1, descending=True)
        sorted_probs = sorted_scores.softmax(dim=-1)
        mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
        remove_sorted = mass_before >= settings.top_p  # keep the smallest prefix reaching top_p
        remove = remove_sorted.scatter(-1, order, remove_sorted)
        scores = scores.masked_fill(remove, float("-inf"))
    return scores.softmax(dim=-1)


def choose_tokens(logits: torch.Tensor, settings: GenerationSettings, generator: torch.Generator | None) -> torch.Tensor:
    """One target choice per row: argmax (greedy) or a sample of :func:`target_probabilities`.

    logits: [N, V] -> tokens [N]. Rows are sampled independently.
    """
    if settings.greedy:
        return logits.argmax(dim=-1)
    probabilities = target_probabilities(logits, settings)
    return torch.multinomial(probabilities, 1, generator=generator)[:, 0]
