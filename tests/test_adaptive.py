"""Never slower than plain decoding (beagle.decoding.adaptive): a request whose rounds yield fewer tokens than
they cost continues with plain steps, with the target's tokens; a good draft never falls back."""

import pytest
import torch

from beagle.decoding import adaptive
from beagle.decoding.adaptive import MIN_ROUNDS, AdaptivePolicy
from beagle.decoding.engine import SpeculativeGenerator
from beagle.decoding.sampling import GenerationSettings
from beagle.decoding.tree import TreeSettings
from beagle.vocab.core import DraftVocab
from tests.conftest import make_tiny_target
from tests.drafts import make_bigram, oracle_draft

TREE = TreeSettings(3, 3, 6)
PROMPT = [5, 17, 33, 2, 61]


def _greedy(tokens=40):
    return GenerationSettings(max_new_tokens=tokens, ignore_eos=True)


def _never_agreeing_draft(target, expected: list[int]):
    """A draft that can only propose tokens the target never emits for PROMPT (a draft vocabulary without them)."""
    draft = oracle_draft(target, "beagle", noise=0.05)
    unused = sorted(set(range(target.vocab_size)) - set(expected) - set(PROMPT))
    return draft.set_vocab(DraftVocab(ids=torch.tensor(unused)))


def _counting_rounds(draft):
    """Count draft_logits calls (drafting work) on a draft."""
    calls = [0]
    inner = draft.draft_logits

    def counted(hidden):
        calls[0] += 1
        return inner(hidden)

    draft.draft_logits = counted
    return calls


@pytest.fixture(scope="module")
def bigram_target():
    target = make_tiny_target("llama", seed=2)
    make_bigram(target)
    return target


@pytest.mark.parametrize("fast", [False, True], ids=["eager", "fast"])
def test_a_draft_that_never_agrees_falls_back_with_the_target_tokens(bigram_target, fast):
    target = bigram_target
    expected = SpeculativeGenerator(target, fast=fast).generate(PROMPT, _greedy()).token_ids
    draft = _never_agreeing_draft(target, expected)
    calls = _counting_rounds(draft)
    adaptive_generator = SpeculativeGenerator(target, draft, TREE, fast=fast)
    adaptive_generator.reserve(len(PROMPT), 40)  # measures the round cost outside the request
    assert adaptive_generator.round_cost_steps > 1.0  # a round is a target pass plus drafting
    calls[0] = 0
    out = adaptive_generator.generate(PROMPT, _greedy())
    adaptive_calls = calls[0]
    assert out.token_ids == expected
    assert out.stats.mode == "fallback" and out.stats.fallback_at_token == 1 + MIN_ROUNDS
    assert len(out.stats.accept_lengths) == MIN_ROUNDS and set(out.stats.accept_lengths) == {0}
    assert out.stats.to_dict()["mode"] == "fallback"

    calls[0] = 0
    raw = SpeculativeGenerator(target, draft, TREE, fast=fast, adaptive=False).generate(PROMPT, _greedy())
    assert raw.token_ids == expected
    assert raw.stats.mode == "speculative" and raw.stats.fallback_at_token is None
    assert len(raw.stats.accept_lengths) == 39  # a round per token after the first
    # No fewer target passes can exist at one token per pass; the rounds' drafting is what fallback saves.
    assert out.stats.target_passes == raw.stats.target_passes == 40
    assert adaptive_calls < calls[0] / 4


@pytest.mark.parametrize("fast", [False, True], ids=["eager", "fast"])
def test_a_perfect_draft_never_falls_back(bigram_target, fast):
    target = bigram_target
    expected = SpeculativeGenerator(target).generate(PROMPT, _greedy(60)).token_ids
    generator = SpeculativeGenerator(target, oracle_draft(target, "beagle"), TreeSettings(4, 2, 8), fast=fast,
                                     round_cost=2.0)
    out = generator.generate(PROMPT, _greedy(60))
    assert out.token_ids == expected
    assert out.stats.mode == "speculative" and out.stats.fallback_at_token is None
    assert out.stats.tau > 2.0 * (1 + adaptive.MARGIN)


def test_the_round_cost_is_measured_once(bigram_target, monkeypatch):
    """On first use when reserve() was not called; never again for that generator."""
    measured = []
    real = adaptive.measure_round_cost

    def counting(*args, **kwargs):
        cost = real(*args, **kwargs)
        measured.append(cost)
        return cost

    monkeypatch.setattr("beagle.decoding.engine.measure_round_cost", counting)
    generator = SpeculativeGenerator(bigram_target, oracle_draft(bigram_target, "eagle2"), TREE)
    assert generator.round_cost_steps is None
    first = generator.generate(PROMPT, _greedy(12))
    generator.generate(PROMPT, _greedy(12))
    assert len(measured) == 1 and measured[0].step_seconds > 0 and measured[0].round_seconds > 0
    assert first.stats.round_cost_steps == generator.round_cost_steps == measured[0].steps
    assert SpeculativeGenerator(bigram_target).generate(PROMPT, _greedy(4)).stats.mode == "autoregressive"
    assert len(measured) == 1  # plain decoding measures nothing


def test_policy():
    policy = AdaptivePolicy(round_cost_steps=2.0, min_rounds=3, margin=0.05)
    for tokens in (1, 1):
        policy.observe(tokens)
        assert not policy.should_fall_back()  # too few rounds to judge
    policy.observe(1)
    assert policy.should_fall_back()
    winning = AdaptivePolicy(round_cost_steps=2.0, min_rounds=3, margin=0.05)
    for tokens in (3, 2, 3, 1, 4):  # running means 3, 2.5, 2.67, 2.25, 2.6
        winning.observe(tokens)
        assert not winning.should_fall_back()
    close = AdaptivePolicy(round_cost_steps=2.0, min_rounds=1, margin=0.05)
    close.observe(2)
    assert close.should_fall_back()  # within the margin: plain decoding
