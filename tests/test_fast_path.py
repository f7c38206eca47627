"""The fast path (fixed shapes, one host read per round) gives the eager path's tokens exactly (fp32, CPU).

On a CPU the fixed-shape phases run eagerly (no CUDA graphs), which is what CI exercises; the GPU runs the
same phase code under graph capture. ``compile_backend="eager"`` traces the target pass with TorchDynamo
(the step the GPU compiles with inductor) without generating code, so CI checks it traces and reuses its
graphs.
"""

import itertools

import pytest
import torch

from beagle.decoding.engine import SpeculativeGenerator
from beagle.decoding.sampling import choose_on_device
from beagle.decoding.sampling import GenerationSettings, target_probabilities
from beagle.decoding.tree import TreeSettings
from beagle.errors import BeagleError
from beagle.models.checkpoint import build_draft
from tests.conftest import FAMILIES, make_tiny_target
from tests.drafts import make_bigram, oracle_draft
from tests.test_engine import TREES  # the same tree shapes as the eager path's tests



def _greedy(tokens=24):
    return GenerationSettings(max_new_tokens=tokens, ignore_eos=True)


@pytest.mark.parametrize("family", FAMILIES)
def test_fast_path_gives_the_eager_tokens(family):
    """Both drafts, concat and no-concat, every tree shape, repeated calls of different lengths on one
    generator (buffers reused): fast == eager speculative == plain AR, and the same accepted lengths."""
    target = make_tiny_target(family, seed=1)
    plain = SpeculativeGenerator(target)
    fast_plain = SpeculativeGenerator(target, fast=True)
    generator = torch.Generator().manual_seed(11)
    for index, (arch, concat, tree) in enumerate(itertools.product(("beagle", "eagle2"), (True, False), TREES)):
        if arch == "eagle2" and not concat:
            continue
        draft = build_draft(target, arch)
        eager = SpeculativeGenerator(target, draft, tree, concat=concat, adaptive=False)
        fast = SpeculativeGenerator(target, draft, tree, concat=concat, fast=True, adaptive=False)
        for call in range(2):
            length = int(torch.randint(1, 30, (1,), generator=generator))
            prompt = torch.randint(0, target.vocab_size, (length,), generator=generator).tolist()
            settings = _greedy(8 + 9 * ((index + call) % 3))
            expected = plain.generate(prompt, settings).token_ids
            assert fast_plain.generate(prompt, settings).token_ids == expected
            reference = eager.generate(prompt, settings)
            out = fast.generate(prompt, settings)
            assert reference.token_ids == expected
            assert out.token_ids == expected, (arch, concat, tree, prompt)
            # Same trees, same verdicts, except where the eager path capped the depth at the budget.
            assert out.stats.accept_lengths[:-1] == reference.stats.accept_lengths[: len(out.stats.accept_lengths) - 1]


def test_fast_path_deep_acceptance_and_cache_growth():
    """Whole paths accepted (the compaction of the static target cache and the padded draft commits are
    exercised at every depth), then a request past the first capacity grows the buffers."""
    target = make_tiny_target("llama", seed=2)
    make_bigram(target)
    plain = SpeculativeGenerator(target)
    for arch in ("beagle", "eagle2"):
        draft = oracle_draft(target, arch, noise=0.05)
        fast = SpeculativeGenerator(target, draft, TREES[0], fast=True, adaptive=False)
        prompt = [5, 6, 7, 8, 9]
        out = fast.generate(prompt, _greedy(60))
        assert out.token_ids == plain.generate(prompt, _greedy(60)).token_ids
        assert out.stats.tau > 2.5  # paths of several tokens: the kept entries moved inside the static cache
        eager = SpeculativeGenerator(target, draft, TREES[0], adaptive=False).generate(prompt, _greedy(60))
        assert out.stats.accept_lengths[:-1] == eager.stats.accept_lengths[:-1]
        first = fast._fast_state.capacity
        long_prompt = list(range(3, 90)) * 4  # 348 tokens + 300 new: past a 512-slot capacity
        settings = _greedy(150)
        assert fast.generate(long_prompt, settings).token_ids == plain.generate(long_prompt, settings).token_ids
        assert fast._fast_state.capacity >= 348 + 150 + 60
        if arch == "beagle":  # the first long request on this target grew its buffers
            assert fast._fast_state.capacity > first


def test_fast_path_eos_inside_an_accepted_path_and_budget_boundaries():
    target = make_tiny_target("qwen2", seed=3)
    make_bigram(target)
    draft = oracle_draft(target, "beagle", noise=0.05)
    prompt = [11, 12, 13]
    plain = SpeculativeGenerator(target)
    reference = plain.generate(prompt, _greedy(40)).token_ids
    fast = SpeculativeGenerator(target, draft, TREES[0], fast=True, adaptive=False)
    full = fast.generate(prompt, _greedy(40))
    # An EOS that the fast path accepts in the middle of a round's path.
    lengths = full.stats.accept_lengths
    position = 1 + lengths[0] + 1 + lengths[1] // 2  # inside the second round's accepted tokens
    eos = reference[position]
    for generator in (plain, fast):
        generator.eos_ids = {eos}
    settings = GenerationSettings(max_new_tokens=40)
    expected = plain.generate(prompt, settings)
    got = fast.generate(prompt, settings)
    assert got.token_ids == expected.token_ids == reference[: reference.index(eos) + 1]
    assert got.stats.stop_reason == "eos"
    for generator in (plain, fast):
        generator.eos_ids = set()
    for budget in (1, 2, 3, 5, 6, 7, 13):  # inside, at and past one round's tokens
        out = fast.generate(prompt, _greedy(budget))
        assert out.token_ids == reference[:budget]
        assert out.stats.stop_reason == "length"


def test_fast_path_near_the_context_limit():
    """Positions never pass the target's context: the last tokens run as plain steps."""
    target = make_tiny_target("mistral", seed=4)  # max_position_embeddings 512
    plain = SpeculativeGenerator(target)
    for arch in ("beagle", "eagle2"):
        fast = SpeculativeGenerator(target, build_draft(target, arch), TREES[0], fast=True, adaptive=False)
        prompt = (list(range(5, 90)) * 6)[:500]
        settings = _greedy(12)
        out = fast.generate(prompt, settings)
        assert out.token_ids == plain.generate(prompt, settings).token_ids
        assert len(out.token_ids) == 12


def test_compiled_target_pass_traces_once_per_shape():
    """The target pass traces with TorchDynamo (the step inductor compiles on a GPU) and later calls
    reuse the traced graphs: no recompilation across generations of other lengths."""
    import torch._dynamo

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    target = make_tiny_target("llama", seed=5)
    plain = SpeculativeGenerator(target)
    tree = TreeSettings(3, 3, 8)
    draft = build_draft(target, "beagle")
    fast = SpeculativeGenerator(target, draft, tree, fast=True, compile=True, compile_backend="eager", adaptive=False)
    fast_plain = SpeculativeGenerator(target, fast=True, compile=True, compile_backend="eager")
    for length in (7, 19):
        prompt = list(range(2, 2 + length))
        assert fast.generate(prompt, _greedy(10)).token_ids == plain.generate(prompt, _greedy(10)).token_ids
        assert fast_plain.generate(prompt, _greedy(10)).token_ids == plain.generate(prompt, _greedy(10)).token_ids
    passes = target._beagle_fixed_passes
    assert passes._compiled_counts == {1, 9}  # one step shape, one verification shape (root + 8)
    assert fast.warmup_seconds > 0
    # Two target passes (1 and 9 tokens) and the draft, accept and commit phases, each traced whole.
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 5


def test_no_compilation_after_warm_up():
    """After ``reserve()`` no request compiles again: other prompt lengths, greedy and sampling at several
    temperatures / top-k / top-p, and a request that runs into the context limit (tail steps)."""
    import torch._dynamo

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    target = make_tiny_target("llama", seed=6)
    draft = build_draft(target, "eagle2")
    fast = SpeculativeGenerator(target, draft, TreeSettings(3, 3, 8), fast=True, compile=True,
                                compile_backend="eager")
    fast.reserve(target.max_length - 8, 8)
    counters = torch._dynamo.utils.counters
    graphs, frames = counters["stats"]["unique_graphs"], counters["frames"]["ok"]
    assert graphs == 5
    settings = [GenerationSettings(max_new_tokens=8, ignore_eos=True, **extra) for extra in (
        {}, {"temperature": 1.0}, {"temperature": 0.4, "top_k": 5}, {"temperature": 1.7, "top_p": 0.3},
        {"temperature": 1.0, "top_k": 3, "top_p": 1e-300})]
    for index, setting in enumerate(settings):
        prompt = list(range(3, 3 + 5 * index + 1))
        fast.generate(prompt, setting)
    fast.generate([1] * (target.max_length - 8), settings[0])  # the last tokens go through tail steps
    fast.generate([1] * (target.max_length - 8), settings[1])
    assert counters["stats"]["unique_graphs"] == graphs
    assert counters["frames"]["ok"] == frames  # no frame compiled again


def test_graphs_need_a_gpu():
    target = make_tiny_target("llama")
    with pytest.raises(BeagleError, match="GPU"):
        SpeculativeGenerator(target, fast=True, graphs=True)
    assert not SpeculativeGenerator(target).fast  # CPU default: the eager path


def test_inverse_cdf_choice_has_the_target_distribution():
    """choose_on_device's sampling rule: empirical frequencies match target_probabilities, and tokens of
    probability 0 (cut by top-k / top-p) never appear."""
    torch.manual_seed(0)
    logits = torch.randn(3, 12)
    for settings in (GenerationSettings(temperature=1.0), GenerationSettings(temperature=0.7, top_k=4),
                     GenerationSettings(temperature=1.3, top_p=0.6)):
        probabilities = target_probabilities(logits, settings)
        draws = 40_000
        rows = logits.repeat(draws, 1)
        choices = choose_on_device(rows, settings, torch.rand(rows.shape[0])).view(draws, 3)
        for row in range(3):
            frequency = torch.bincount(choices[:, row], minlength=12).float() / draws
            assert torch.all(frequency[probabilities[row] == 0] == 0)
            assert torch.allclose(frequency, probabilities[row], atol=0.012)
