"""Beagle's last-state skip (``--last-state-skip``): zero-initialised, lossless on every path, trained and
fine-tuned from a draft without it, saved, exported for vLLM, refused for EAGLE-2."""

import json

import pytest
import torch

from beagle.cli.main import main
from beagle.decoding.engine import SpeculativeGenerator
from beagle.decoding.sampling import GenerationSettings
from beagle.decoding.tree import TreeSettings
from beagle.errors import BeagleError
from beagle.models.beagle.masks import inverse_block_mask, most_recent_visible, simulation_mask
from beagle.models.checkpoint import build_draft, load_draft, save_draft
from beagle.training.trainer import train
from test_training_options import config_for
from test_training_support import pretokenized, tiny_target, write_jsonl

VOCAB = 61
TREE = TreeSettings(depth=3, top_k=3, total_tokens=8)


@pytest.fixture(scope="module")
def target():
    torch.set_num_threads(1)
    return tiny_target(VOCAB, seed=0)


def skip_draft(target, std=0.3, seed=0):
    torch.manual_seed(seed)
    draft = build_draft(target, "beagle", last_state_skip=True)
    with torch.no_grad():
        torch.nn.init.normal_(draft.skip.weight, std=std)
    return draft


def test_most_recent_visible_follows_the_masks():
    positions = torch.arange(6).repeat(2)[None]  # [true | predicted] at positions 0..5 twice
    states = torch.arange(12, dtype=torch.float32)[None, :, None].expand(1, 12, 2)
    offsets = torch.tensor([0])
    stage1 = most_recent_visible(states[:, :6], positions[:, :6], inverse_block_mask(6, 3, offsets))
    # window 3 from 0: blocks [0 1 2] [3 4 5]; queries 3..5 see true states 0..2, the newest is 2
    assert stage1[0, :, 0].tolist() == [0, 0, 0, 2, 2, 2]  # queries 0..2 see nothing: zeros
    step3 = most_recent_visible(states, positions, simulation_mask(6, 3, offsets, 3))
    # step 3: window position 1 sees true 2; wp 2 sees predicted 3' (index 9); wp 3 sees predicted 4' (index 10)
    assert step3[0, 3:, 0].tolist() == [2, 9, 10]


def test_zero_skip_changes_nothing(target):
    draft = build_draft(target, "beagle")
    with_skip = build_draft(target, "beagle")
    with_skip.load_state_dict(draft.state_dict())
    with_skip.enable_last_state_skip()
    assert with_skip.config.last_state_skip and with_skip.skip.weight.abs().sum() == 0
    fresh = build_draft(target, "beagle", last_state_skip=True)
    assert fresh.skip.weight.abs().sum() == 0  # the random initialisation leaves it at zero
    prompt = torch.randint(0, VOCAB, (14,), generator=torch.Generator().manual_seed(3)).tolist()
    settings = GenerationSettings(max_new_tokens=16, ignore_eos=True)
    a = SpeculativeGenerator(target, draft, TREE, adaptive=False).generate(prompt, settings)
    b = SpeculativeGenerator(target, with_skip, TREE, adaptive=False).generate(prompt, settings)
    assert a.token_ids == b.token_ids and a.stats.accept_lengths == b.stats.accept_lengths


@pytest.mark.parametrize("concat", [True, False])
def test_skip_is_lossless_and_the_fast_path_drafts_as_the_eager_one(target, concat):
    draft = skip_draft(target)
    plain = SpeculativeGenerator(target)
    eager = SpeculativeGenerator(target, draft, TREE, concat=concat, adaptive=False)
    fast = SpeculativeGenerator(target, draft, TREE, concat=concat, fast=True, adaptive=False)
    generator = torch.Generator().manual_seed(5)
    for length in (1, 9, 23):
        prompt = torch.randint(0, VOCAB, (length,), generator=generator).tolist()
        settings = GenerationSettings(max_new_tokens=20, ignore_eos=True)
        expected = plain.generate(prompt, settings).token_ids
        reference = eager.generate(prompt, settings)
        out = fast.generate(prompt, settings)
        assert reference.token_ids == expected and out.token_ids == expected
        assert out.stats.accept_lengths[:-1] == reference.stats.accept_lengths[: len(out.stats.accept_lengths) - 1]
    # the skip takes part: other weights, other trees
    other = skip_draft(target, std=0.0)
    prompt = torch.randint(0, VOCAB, (30,), generator=generator).tolist()
    settings = GenerationSettings(max_new_tokens=40, ignore_eos=True)
    with_skip = SpeculativeGenerator(target, draft, TREE, concat=concat, adaptive=False).generate(prompt, settings)
    without = SpeculativeGenerator(target, other, TREE, concat=concat, adaptive=False).generate(prompt, settings)
    assert with_skip.stats.accept_lengths != without.stats.accept_lengths


def test_checkpoint_round_trip_and_parameter_count(target, tmp_path):
    draft = skip_draft(target)
    assert draft.num_parameters() == type(draft).parameter_count(draft.config)
    assert draft.num_parameters() == type(draft).parameter_count(build_draft(target, "beagle").config) + 64 * 64 + 64
    save_draft(draft, tmp_path / "d")
    assert json.loads((tmp_path / "d" / "config.json").read_text())["last_state_skip"] is True
    loaded = load_draft(tmp_path / "d", target)
    assert loaded.config.last_state_skip and torch.equal(loaded.skip.weight, draft.skip.weight)


def test_eagle2_refuses_the_skip(target, tmp_path, capsys):
    with pytest.raises(BeagleError, match="the last-state skip is a Beagle option"):
        build_draft(target, "eagle2", last_state_skip=True)
    data = write_jsonl(tmp_path / "d.jsonl", pretokenized(10, VOCAB, seed=1, low=12, high=24))
    with pytest.raises(BeagleError, match="last_state_skip|last-state-skip"):
        config_for(tmp_path / "e", data, arch="eagle2", last_state_skip=True).validate()


def test_train_with_the_skip_and_fine_tune_a_draft_without_it(tmp_path, target):
    data = write_jsonl(tmp_path / "d.jsonl", pretokenized(10, VOCAB, seed=1, low=12, high=24))
    first = train(config_for(tmp_path / "plain", data, max_steps=2), target=target)
    start = load_draft(first, target)
    assert not start.config.last_state_skip
    tuned = load_draft(train(config_for(tmp_path / "tuned", data, init_draft=str(first), last_state_skip=True,
                                        max_steps=3), target=target), target)
    assert tuned.config.last_state_skip and tuned.config.training["last_state_skip"] is True
    assert tuned.skip.weight.abs().sum() > 0  # trained away from its zero start
    scratch = load_draft(train(config_for(tmp_path / "scratch", data, last_state_skip=True, max_steps=2),
                               target=target), target)
    assert scratch.config.last_state_skip
    prompt = list(range(3, 15))
    expected = SpeculativeGenerator(target).generate(prompt, max_new_tokens=12).token_ids
    for draft in (tuned, scratch):
        assert SpeculativeGenerator(target, draft, TREE).generate(prompt, max_new_tokens=12).token_ids == expected


def test_vllm_export_carries_the_skip(target, tmp_path, capsys):
    draft = skip_draft(target)
    save_draft(draft, tmp_path / "d")
    assert main(["export", "--format", "vllm", str(tmp_path / "d"), str(tmp_path / "v")]) == 0
    config = json.loads((tmp_path / "v" / "config.json").read_text())
    assert config["last_state_skip"] is True
    from safetensors.torch import load_file

    weights = load_file(str(tmp_path / "v" / "model.safetensors"))
    assert torch.equal(weights["skip.weight"], draft.skip.weight.detach().float())
    assert "skip_norm.weight" in weights
