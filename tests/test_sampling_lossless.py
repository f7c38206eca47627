"""Speculative sampling is lossless: the joint law of the first generated tokens equals the target's.

A tiny-vocabulary target (V = 6) makes the exact joint distribution of the first three
tokens computable (6³ = 216 outcomes). 20,000 speculative samples (fixed seeds) are
compared with it by Pearson's chi-squared test; cells with expected count < 5 are pooled.
The p-value threshold 1e-4 makes a false alarm negligible, while a deliberately broken
acceptance rule ("forgot the residual": after a rejection, resample from p instead of the
residual) is rejected by the same test with an astronomically small p-value.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from beagle.decoding.engine import SpeculativeGenerator
from beagle.decoding.sampling import choose_on_device
from beagle.decoding.verify import FastVerifier
from beagle.decoding.sampling import GenerationSettings, choose_tokens, target_probabilities
from beagle.decoding.tree import TreeSettings
from beagle.decoding.verify import Acceptance, TreeVerifier, Verdict, accept_path
from tests.conftest import make_tiny_target
from tests.drafts import oracle_draft

VOCAB = 6
LENGTH = 3
SAMPLES = 20_000
PROMPT = [1, 4, 2]


def exact_joint(target, settings: GenerationSettings) -> torch.Tensor:
    """P(t1, t2, t3 | prompt) under the target's (warped) sampling distribution: [V, V, V]."""
    prefixes = torch.tensor(list(itertools.product(range(VOCAB), repeat=LENGTH - 1)))  # [V², 2]
    inputs = torch.cat([torch.tensor(PROMPT).expand(len(prefixes), -1), prefixes], dim=1)
    with torch.no_grad():
        logits = target.logits(target.forward(inputs))  # [V², P+2, V]
    p = target_probabilities(logits.reshape(-1, VOCAB), settings).reshape(logits.shape)
    first = p[0, len(PROMPT) - 1]  # [V]
    second = torch.stack([p[t1 * VOCAB, len(PROMPT)] for t1 in range(VOCAB)])  # [t1, t2]
    third = p[:, len(PROMPT) + 1].reshape(VOCAB, VOCAB, VOCAB)  # [t1, t2, t3]
    return first[:, None, None] * second[:, :, None] * third


def chi_squared_p_value(counts: torch.Tensor, probabilities: torch.Tensor) -> float:
    counts = counts.flatten().double()
    expected = probabilities.flatten().double() * counts.sum()
    small = expected < 5
    observed_cells = torch.cat([counts[~small], counts[small].sum()[None]])
    expected_cells = torch.cat([expected[~small], expected[small].sum()[None]])
    keep = expected_cells > 0
    statistic = (((observed_cells - expected_cells) ** 2) / expected_cells)[keep].sum()
    dof = int(keep.sum()) - 1
    return float(torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.float64), statistic / 2))


def sample_counts(generator: SpeculativeGenerator, settings: GenerationSettings, samples: int = SAMPLES) -> torch.Tensor:
    counts = torch.zeros(VOCAB, VOCAB, VOCAB)
    for seed in range(samples):
        settings.seed = seed
        tokens = generator.generate(PROMPT, settings).token_ids
        counts[tuple(tokens)] += 1
    return counts


class ForgotResidualVerifier(TreeVerifier):
    """BROKEN on purpose: when the walk stops, the bonus is redrawn from the full p instead of
    the residual (p restricted to tokens that were not children), a classic lossy bug."""

    def __call__(self, tree, logits, settings, generator):
        verdict = accept_path(tree, choose_tokens(logits, settings, generator))
        node = verdict.path[-1] + 1 if verdict.path else 0
        redraw = choose_tokens(logits[node : node + 1], settings, generator)
        return Verdict(verdict.path, int(redraw[0]))


@pytest.fixture(scope="module")
def setup():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threading only adds overhead
    target = make_tiny_target("llama", vocab_size=VOCAB, seed=11, num_hidden_layers=1)
    # An imperfect draft: it agrees with the target often but not always, so acceptance happens at several depths.
    draft = oracle_draft(target, "beagle", noise=0.3, seed=1)
    yield target, draft
    torch.set_num_threads(threads)


@pytest.mark.parametrize("top_p", [1.0, 0.8])
def test_speculative_sampling_matches_target_distribution(setup, top_p):
    target, draft = setup
    settings = GenerationSettings(max_new_tokens=LENGTH, temperature=1.0, top_p=top_p, ignore_eos=True)
    generator = SpeculativeGenerator(target, draft, TreeSettings(depth=3, top_k=2, total_tokens=6), adaptive=False)
    counts = sample_counts(generator, settings)
    assert sum(generator.last_stats.accept_lengths) >= 0
    p_value = chi_squared_p_value(counts, exact_joint(target, settings))
    assert p_value > 1e-4, f"speculative samples deviate from the target distribution (p = {p_value:.2e})"


def test_acceptance_happens_during_sampling(setup):
    target, draft = setup
    generator = SpeculativeGenerator(target, draft, TreeSettings(depth=3, top_k=2, total_tokens=6), adaptive=False)
    accepted = 0
    for seed in range(200):
        generator.generate(PROMPT, GenerationSettings(max_new_tokens=LENGTH, temperature=1.0, seed=seed, ignore_eos=True))
        accepted += sum(generator.last_stats.accept_lengths)
    assert accepted > 50  # the test above really exercises accepted draft tokens


def test_broken_acceptance_rule_fails_the_same_test(setup):
    target, draft = setup
    settings = GenerationSettings(max_new_tokens=LENGTH, temperature=1.0, ignore_eos=True)
    generator = SpeculativeGenerator(
        target, draft, TreeSettings(depth=3, top_k=2, total_tokens=6), verifier=ForgotResidualVerifier(), adaptive=False
    )
    counts = sample_counts(generator, settings)
    p_value = chi_squared_p_value(counts, exact_joint(target, settings))
    assert p_value < 1e-4, f"the broken rule was not detected (p = {p_value:.2e})"


def test_autoregressive_sampling_matches_too(setup):
    """Sanity check of the harness itself: plain sampling through the engine passes."""
    target, _ = setup
    settings = GenerationSettings(max_new_tokens=LENGTH, temperature=1.0, ignore_eos=True)
    counts = sample_counts(SpeculativeGenerator(target), settings, samples=5_000)
    assert chi_squared_p_value(counts, exact_joint(target, settings)) > 1e-4


# ------------------------------------------------------------------ the fast path
class ForgotResidualFastVerifier(FastVerifier):
    """BROKEN on purpose, the fast path's version of the bug above: the bonus is a fresh draw from the
    full p at the last accepted node instead of the choice already made there."""

    def accept(self, tree, choices, ancestry, logits, settings):
        acceptance = super().accept(tree, choices, ancestry, logits, settings)
        node = acceptance.keep[acceptance.count - 1]  # the last accepted row
        redraw = choose_on_device(logits[node], settings, torch.rand(1))
        return Acceptance(acceptance.keep, acceptance.count, redraw)


FAST_SAMPLES = 8_000  # the fixed-shape phases run eagerly on a CPU, ~3× slower per call than the eager path


def test_fast_path_sampling_matches_target_distribution(setup):
    target, draft = setup
    settings = GenerationSettings(max_new_tokens=LENGTH, temperature=1.0, top_p=0.8, ignore_eos=True)
    generator = SpeculativeGenerator(target, draft, TreeSettings(depth=3, top_k=2, total_tokens=6), fast=True, adaptive=False)
    counts = sample_counts(generator, settings, FAST_SAMPLES)
    p_value = chi_squared_p_value(counts, exact_joint(target, settings))
    assert p_value > 1e-4, f"fast-path samples deviate from the target distribution (p = {p_value:.2e})"


def test_fast_path_broken_acceptance_rule_fails_the_same_test(setup):
    target, draft = setup
    settings = GenerationSettings(max_new_tokens=LENGTH, temperature=1.0, ignore_eos=True)
    generator = SpeculativeGenerator(target, draft, TreeSettings(depth=3, top_k=2, total_tokens=6), fast=True,
                                     fast_verifier=ForgotResidualFastVerifier(), adaptive=False)
    counts = sample_counts(generator, settings, FAST_SAMPLES)
    p_value = chi_squared_p_value(counts, exact_joint(target, settings))
    assert p_value < 1e-4, f"the broken rule was not detected (p = {p_value:.2e})"
