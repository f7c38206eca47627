"""Greedy speculative decoding equals the target's greedy decoding, exactly (fp32, CPU)."""

import itertools

import pytest
import torch

from beagle.decoding.engine import SpeculativeGenerator
from beagle.decoding.sampling import GenerationSettings
from beagle.decoding.tree import TreeSettings
from beagle.errors import BeagleError, IncompatibleDraftError
from beagle.models.checkpoint import build_draft
from tests.conftest import FAMILIES, make_tiny_target
from tests.drafts import make_bigram, oracle_draft

TREES = [
    TreeSettings(5, 10, 60),
    TreeSettings(1, 10, 10),
    TreeSettings(4, 1, 4),
    TreeSettings(1, 1, 1),
    TreeSettings(3, 4, 20),
    TreeSettings(8, 6, 80),  # deeper than the remaining budget near the end
]


def _greedy(settings_tokens=24):
    return GenerationSettings(max_new_tokens=settings_tokens, ignore_eos=True)


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_equality_random_drafts(family):
    """≥ 50 random prompts per family, rotating over both architectures, concat modes and tree shapes."""
    target = make_tiny_target(family, seed=1)
    plain = SpeculativeGenerator(target)
    drafts = {arch: build_draft(target, arch) for arch in ("beagle", "eagle2")}
    generator = torch.Generator().manual_seed(7)
    variants = list(itertools.product(("beagle", "eagle2"), (True, False), TREES))
    for index in range(50):
        arch, concat, tree = variants[index % len(variants)]
        length = int(torch.randint(1, 20, (1,), generator=generator))
        prompt = torch.randint(0, target.vocab_size, (length,), generator=generator).tolist()
        expected = plain.generate(prompt, _greedy()).token_ids
        speculative = SpeculativeGenerator(target, drafts[arch], tree, concat=concat, adaptive=False)
        assert speculative.generate(prompt, _greedy()).token_ids == expected, (arch, concat, tree, prompt)


@pytest.mark.parametrize("arch", ["beagle", "eagle2"])
@pytest.mark.parametrize("tree", TREES, ids=str)
def test_greedy_equality_with_deep_acceptance(arch, tree):
    """An oracle draft on a bigram target accepts whole paths: exercises deep acceptance and cache moves."""
    target = make_tiny_target("llama", seed=2)
    make_bigram(target)
    plain = SpeculativeGenerator(target)
    for noise in (0.0, 0.05):
        draft = oracle_draft(target, arch, noise=noise)
        speculative = SpeculativeGenerator(target, draft, tree, adaptive=False)
        for seed in range(3):
            prompt = torch.randint(0, 97, (5,), generator=torch.Generator().manual_seed(seed)).tolist()
            out = speculative.generate(prompt, _greedy(30))
            assert out.token_ids == plain.generate(prompt, _greedy(30)).token_ids
    if tree.depth > 1 and tree.top_k > 1:
        perfect = SpeculativeGenerator(target, oracle_draft(target, arch), tree, adaptive=False).generate(prompt, _greedy(30))
        assert perfect.stats.tau > 2.0


def test_matches_hf_generate(llama_target):
    draft = build_draft(llama_target, "beagle")
    for seed in range(3):
        prompt = torch.randint(0, 97, (1, 8), generator=torch.Generator().manual_seed(seed))
        hf = llama_target.model.generate(
            prompt, max_new_tokens=20, do_sample=False, min_new_tokens=20, pad_token_id=0, eos_token_id=None
        )[0, 8:].tolist()
        ours = SpeculativeGenerator(llama_target, draft, adaptive=False).generate(prompt, _greedy(20)).token_ids
        assert ours == hf


@pytest.mark.parametrize("arch", ["beagle", "eagle2"])
def test_target_cache_equals_autoregressive_cache(arch):
    target = make_tiny_target("qwen2", seed=3)
    make_bigram(target)
    generator = SpeculativeGenerator(target, oracle_draft(target, arch, noise=0.05), TreeSettings(4, 3, 12), adaptive=False)
    generator.keep_last_cache = True
    prompt = list(range(3, 12))
    out = generator.generate(prompt, _greedy(25))
    assert out.stats.target_passes < 25  # several tokens per pass happened
    cache = generator.last_target_cache
    # The last emitted token is the next round's root: not in the cache yet.
    reference_cache = target.new_cache()
    target.forward(torch.tensor([prompt + out.token_ids[:-1]]), reference_cache)
    assert cache.get_seq_length() == reference_cache.get_seq_length() == len(prompt) + len(out.token_ids) - 1
    for ours, reference in zip(cache.layers, reference_cache.layers):
        torch.testing.assert_close(ours.keys, reference.keys, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ours.values, reference.values, rtol=1e-5, atol=1e-5)


def test_eos_and_stats(llama_target):
    make_bigram(llama_target)
    plain = SpeculativeGenerator(llama_target)
    prompt = [5, 6, 7]
    free = plain.generate(prompt, _greedy(12)).token_ids
    eos = free[4]
    plain.eos_ids = {eos}
    speculative = SpeculativeGenerator(llama_target, oracle_draft(llama_target, "beagle"), TreeSettings(5, 4, 20), adaptive=False)
    speculative.eos_ids = {eos}
    stopped = speculative.generate(prompt, GenerationSettings(max_new_tokens=12))
    assert stopped.token_ids == free[: free.index(eos) + 1]
    assert stopped.stats.stop_reason == "eos"
    stats = speculative.generate(prompt, _greedy(12)).stats
    assert stats.new_tokens == 12
    assert sum(stats.accept_lengths) + len(stats.accept_lengths) + 1 >= 12
    assert len(stats.accept_length_histogram()) >= 1 and stats.tau > 1
    report = stats.to_dict()
    assert set(report["time_s"]) == {"total", "prefill", "draft", "verify", "other"}


def test_bad_input(llama_target, tmp_path):
    generator = SpeculativeGenerator(llama_target, build_draft(llama_target, "beagle"))
    with pytest.raises(BeagleError, match="empty"):
        generator.generate([], _greedy())
    with pytest.raises(BeagleError, match="context length"):
        generator.generate([1] * 500, GenerationSettings(max_new_tokens=50))
    with pytest.raises(BeagleError, match="max_new_tokens"):
        generator.generate([1, 2], GenerationSettings(max_new_tokens=0))
    with pytest.raises(BeagleError, match="temperature"):
        generator.generate([1, 2], GenerationSettings(temperature=-1))
    with pytest.raises(BeagleError, match="top_p"):
        generator.generate([1, 2], GenerationSettings(top_p=0))
    with pytest.raises(BeagleError, match="in \\[0, 97\\)"):
        generator.generate([1, 500], _greedy())
    draft = build_draft(llama_target, "beagle")
    with pytest.raises(BeagleError, match="total_tokens"):
        SpeculativeGenerator(llama_target, draft, TreeSettings(2, 3, 100))
    with pytest.raises(BeagleError, match="depth"):
        SpeculativeGenerator(llama_target, draft, TreeSettings(0, 3, 3))
    with pytest.raises(BeagleError, match="vocabulary"):
        SpeculativeGenerator(llama_target, draft, TreeSettings(1, 200, 100))
    other = make_tiny_target("llama", vocab_size=50)
    with pytest.raises(IncompatibleDraftError):
        SpeculativeGenerator(other, build_draft(llama_target, "eagle2"))
