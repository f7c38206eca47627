"""Generation settings and the target's token choice (greedy or sampled), named as in ``GenerationConfig``."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from beagle.errors import BeagleError

# Temperatures in (0, MIN_SAMPLING_TEMPERATURE) decode greedily: the limit of sampling as T -> 0 (below
# ~1e-38, logits / T overflow float32 and no distribution is left to sample from). vLLM uses the same 1e-5.
MIN_SAMPLING_TEMPERATURE = 1e-5
SEED_RANGE = (-(2**63), 2**64 - 1)  # what torch.Generator.manual_seed accepts


@dataclass
class GenerationSettings:
    """max_new_tokens ≥ 1; temperature 0 = greedy (as is any temperature below MIN_SAMPLING_TEMPERATURE);
    top_p in (0, 1] (the most probable token is always kept, so a tiny top_p decodes greedily); top_k
    0 = off (as is any top_k ≥ the vocabulary); seed: a 64-bit integer or None; stop: stop strings.
    :meth:`validate` is the one check of these values, for the CLI and the server alike."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    ignore_eos: bool = False

    @property
    def greedy(self) -> bool:
        return self.temperature < MIN_SAMPLING_TEMPERATURE

    @property
    def filtered(self) -> bool:
        """Sampling through top-k or top-p (which needs a sort of the vocabulary)."""
        return not self.greedy and (self.top_k > 0 or self.top_p < 1.0)

    @property
    def mode(self) -> str:
        """What a captured graph depends on: ``greedy``, ``sample`` or ``filtered`` (the values themselves
        live in :class:`SamplingTensors`)."""
        return "greedy" if self.greedy else "filtered" if self.filtered else "sample"

    def validate(self) -> "GenerationSettings":
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise BeagleError(f"max_new_tokens must be a positive integer, got {self.max_new_tokens!r}")
        if not isinstance(self.temperature, (int, float)) or not math.isfinite(self.temperature) \
                or self.temperature < 0:
            raise BeagleError(f"temperature must be a finite number ≥ 0 (0 = greedy), got {self.temperature!r}")
        if isinstance(self.top_p, bool) or not isinstance(self.top_p, (int, float)) or not 0 < self.top_p <= 1:
            raise BeagleError(f"top_p must be a number in (0, 1], got {self.top_p!r}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise BeagleError(f"top_k must be an integer ≥ 0 (0 = off; a top_k beyond the vocabulary is off too), "
                              f"got {self.top_k!r}")
        low, high = SEED_RANGE
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)
                                      or not low <= self.seed <= high):
            raise BeagleError(f"seed must be a 64-bit integer (from -2**63 to 2**64 - 1), got {self.seed!r}")
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
        remove_sorted = keep_most_probable(mass_before >= settings.top_p)  # the smallest prefix reaching top_p
        remove = remove_sorted.scatter(-1, order, remove_sorted)
        scores = scores.masked_fill(remove, float("-inf"))
    return scores.softmax(dim=-1)


def keep_most_probable(remove_sorted: torch.Tensor) -> torch.Tensor:
    """Never remove a row's most probable token (column 0 of a descending sort): [N, V] bool -> [N, V].

    top_p → 0 keeps exactly that token (greedy, the limit), and a top_p too small for float32 (below
    ~1e-45 it rounds to 0, so ``mass_before >= top_p`` holds everywhere) cannot leave a row with nothing
    to sample (softmax of all -inf = NaN). HF's ``min_tokens_to_keep=1``."""
    return torch.cat([torch.zeros_like(remove_sorted[..., :1]), remove_sorted[..., 1:]], dim=-1)


def choose_tokens(logits: torch.Tensor, settings: GenerationSettings, generator: torch.Generator | None) -> torch.Tensor:
    """One target choice per row: argmax (greedy) or a sample of :func:`target_probabilities`.

    logits: [N, V] -> tokens [N]. Rows are sampled independently.
    """
    if settings.greedy:
        return logits.argmax(dim=-1)
    probabilities = target_probabilities(logits, settings)
    return torch.multinomial(probabilities, 1, generator=generator)[:, 0]


class SamplingTensors:
    """Sampling settings in device tensors, so one captured graph serves every temperature / top-k / top-p.

    temperature: [1] float32; top_k: [1] long (0 = off); top_p: [1] float32. :meth:`load` writes new values
    in place (outside any graph), so graphs captured over these tensors read the settings of each call.
    """

    def __init__(self, device):
        self.temperature = torch.ones(1, device=device)
        self.top_k = torch.zeros(1, dtype=torch.long, device=device)
        self.top_p = torch.ones(1, device=device)

    def load(self, settings: GenerationSettings) -> "SamplingTensors":
        self.temperature.fill_(max(float(settings.temperature), MIN_SAMPLING_TEMPERATURE))
        self.top_k.fill_(int(settings.top_k))
        self.top_p.fill_(float(settings.top_p))
        return self


def sample_on_device(logits: torch.Tensor, sampling: SamplingTensors, uniforms: torch.Tensor,
                     filtered: bool = True) -> torch.Tensor:
    """Inverse-CDF sampling of :func:`target_probabilities` with the settings in ``sampling``, no host reads.

    logits: [T, V] float32; uniforms: [T] in [0, 1) -> [T] long. ``filtered``: apply top-k / top-p (a sort of
    the vocabulary per row); without it, temperature only, sampled in vocabulary order. Filtered, the same
    distribution as :func:`target_probabilities` (temperature, then top-k keeping ties at the k-th score,
    then the smallest top-p prefix, never empty), sampled in descending-score order. Either way
    P(choice = t) = p_t exactly, and a token of probability 0 is never chosen (its CDF step is empty).
    """
    scores = logits / sampling.temperature
    if not filtered:
        cdf = scores.softmax(dim=-1).cumsum(dim=-1)  # [T, V]
        threshold = (uniforms * cdf[:, -1])[:, None]
        return torch.searchsorted(cdf, threshold, right=True)[:, 0].clamp(max=scores.shape[-1] - 1)
    sorted_scores, order = torch.sort(scores, dim=-1, descending=True)  # [T, V]
    vocab = scores.shape[-1]
    k = torch.where(sampling.top_k > 0, sampling.top_k.clamp(max=vocab), vocab)  # [1]
    kth = sorted_scores.index_select(-1, k - 1)  # [T, 1]: the k-th best score (ties with it are kept)
    sorted_scores = sorted_scores.masked_fill(sorted_scores < kth, float("-inf"))
    sorted_probs = sorted_scores.softmax(dim=-1)
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
    remove = keep_most_probable(mass_before >= sampling.top_p)
    kept = sorted_scores.masked_fill(remove, float("-inf")).softmax(dim=-1)
    cdf = kept.cumsum(dim=-1)
    threshold = (uniforms * cdf[:, -1])[:, None]
    picked = torch.searchsorted(cdf, threshold, right=True).clamp(max=vocab - 1)  # [T, 1] sorted rank
    return order.gather(-1, picked)[:, 0]


def choose_on_device(logits: torch.Tensor, settings: GenerationSettings, uniforms: torch.Tensor | None,
                     sampling: SamplingTensors | None = None) -> torch.Tensor:
    """The target's choice per row without host reads: argmax (greedy), or :func:`sample_on_device` with one
    uniform per row (``sampling``: the device copy of the settings; made from ``settings`` when None).

    logits: [T, V] float32; uniforms: [T] in [0, 1) (sampling only) -> [T] long.
    """
    if settings.greedy:
        return logits.argmax(dim=-1)
    if sampling is None:
        sampling = SamplingTensors(logits.device).load(settings)
    return sample_on_device(logits, sampling, uniforms, settings.filtered)
