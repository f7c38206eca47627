"""The ablation options of `beagle train`: the draft's own key/value heads, stage 1 only, stage 2 over the
tree depth, a separate held-out set; they round-trip through checkpoints and old checkpoints still load."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from beagle.cli.main import main
from beagle.decoding.engine import SpeculativeGenerator
from beagle.decoding.tree import TreeSettings
from beagle.errors import BeagleError
from beagle.models.checkpoint import build_draft, load_draft
from beagle.models.config import DraftConfig
from beagle.data.batches import ChatDataset
from beagle.data.features import generate_features
from beagle.training.trainer import TrainConfig, Trainer, train
from test_training_support import pretokenized, tiny_target, write_jsonl

VOCAB = 61
SHIPPED = Path(__file__).resolve().parents[1] / "drafts"


@pytest.fixture(scope="module")
def target():
    torch.set_num_threads(1)
    return tiny_target(VOCAB, seed=0)  # 4 attention heads, 2 key/value heads


@pytest.fixture
def data(tmp_path):
    # 10 sequences, 2 held out: 8 train -> 4 steps of 2 per epoch
    return write_jsonl(tmp_path / "d.jsonl", pretokenized(10, VOCAB, seed=1, low=12, high=24))


def config_for(out, data, **overrides):
    base = dict(data=data, out=str(out), epochs_stage1=1, epochs_stage2=1, batch_size=2, lr=1e-3, warmup=2,
                heldout_count=2, eval_depth=3, window=3, sim_steps=2, progress=False, tensorboard=False, seed=7)
    base.update(overrides)
    return TrainConfig(**base)


@pytest.mark.parametrize("arch", ["beagle", "eagle2"])
def test_draft_kv_heads_train_save_load_and_decode_losslessly(tmp_path, target, data, arch):
    out = train(config_for(tmp_path / arch, data, arch=arch, draft_kv_heads=4, max_steps=2), target=target)
    draft = load_draft(out, target)
    assert draft.config.num_key_value_heads == 4 and target.config.num_key_value_heads == 2
    attention = draft.cross_attn if arch == "beagle" else draft.self_attn
    assert attention.v_proj.weight.shape == (4 * draft.config.head_dim, 64)  # values keep all 64 state dims
    assert draft.config.training["draft_kv_heads"] == 4
    assert draft.new_cache().keys.shape[1] == 4
    prompt = torch.randint(0, VOCAB, (12,)).tolist()
    plain = SpeculativeGenerator(target).generate(prompt, max_new_tokens=12).token_ids
    drafted = SpeculativeGenerator(target, draft, TreeSettings(depth=3, top_k=3, total_tokens=8))
    assert drafted.generate(prompt, max_new_tokens=12).token_ids == plain


def test_draft_kv_heads_must_divide_the_heads(target):
    with pytest.raises(BeagleError, match="must divide the target's 4 attention heads"):
        build_draft(target, "beagle", 3)
    with pytest.raises(BeagleError, match="--draft-kv-heads must be at least 1"):
        config_for("x", "d.jsonl", draft_kv_heads=0).validate()


def test_stage_one_only_and_stage_two_over_the_tree_depth(tmp_path, target, data):
    stage1 = load_draft(train(config_for(tmp_path / "s1", data, epochs_stage1=2, epochs_stage2=0), target=target))
    history = stage1.config.training["history"]
    assert [(entry["epoch"], entry["stage"]) for entry in history] == [(1, 1), (2, 1)]
    assert stage1.config.training["epochs_stage2"] == 0 and stage1.config.training["step"] == 8
    # stage 2 simulating 5 steps (the default tree depth) with the default stage-1 window and stage-2 window
    deep = load_draft(train(config_for(tmp_path / "s5", data, window=5, sim_steps=5, eval_depth=5), target=target))
    training = deep.config.training
    assert (training["window"], training["sim_steps"], training["stage2_window"]) == (5, 5, 5)
    assert [entry["stage"] for entry in training["history"]] == [1, 2]
    assert all(len(entry["acceptance"]) == 5 for entry in training["history"])
    with pytest.raises(BeagleError, match="nothing to train"):
        config_for("x", data, epochs_stage1=0, epochs_stage2=0).validate()


def test_resume_refuses_other_kv_heads(tmp_path, target, data):
    train(config_for(tmp_path / "run", data, max_steps=1), target=target)
    with pytest.raises(BeagleError, match="draft_kv_heads"):
        Trainer(config_for(tmp_path / "run", data, max_steps=2, resume=True, draft_kv_heads=4), target).run()


def test_eval_data_replaces_the_heldout_split(tmp_path, target, data):
    heldout = write_jsonl(tmp_path / "heldout.jsonl", pretokenized(3, VOCAB, seed=9, low=12, high=24))
    trainer = Trainer(config_for(tmp_path / "run", data, heldout_count=None, eval_data=heldout), target)
    assert trainer.train_indices == list(range(10)) and trainer.heldout_indices == [0, 1, 2]
    features = generate_features(target, ChatDataset.from_file(heldout, None, 2048), tmp_path / "features",
                                 states_dtype=torch.float32, progress=False)
    from_features = train(config_for(tmp_path / "f", data, heldout_count=None, eval_data=str(features),
                                     max_steps=2), target=target)
    from_file = train(config_for(tmp_path / "c", data, heldout_count=None, eval_data=heldout, max_steps=2),
                      target=target)
    (one,), (two,) = (load_draft(p).config.training["history"] for p in (from_features, from_file))
    assert one["counted"] == two["counted"] and one["counted"][0] > 0  # the same held-out positions
    assert one["tau"] == pytest.approx(two["tau"], abs=1e-6)


def test_train_cli_ablation_flags(tmp_path, target, data, capsys):
    folder = tmp_path / "target"
    target.model.save_pretrained(folder)
    common = ["--target", str(folder), "--data", data, "--batch-size", "2", "--heldout", "2", "--window", "3",
              "--eval-depth", "2", "--no-progress", "--no-tensorboard", "--device", "cpu"]
    out = tmp_path / "draft"
    assert main(["train", *common, "--out", str(out), "--draft-kv-heads", "1", "--epochs-stage1", "1",
                 "--epochs-stage2", "0"]) == 0
    assert "draft written to" in capsys.readouterr().out
    config = json.loads((out / "config.json").read_text())
    assert config["num_key_value_heads"] == 1 and config["training"]["epochs_stage2"] == 0
    assert main(["train", *common, "--out", str(tmp_path / "bad"), "--draft-kv-heads", "3"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error: the draft's key/value heads (3)")


@pytest.mark.parametrize("name", ["smollm2-beagle", "smollm2-eagle2"])
def test_shipped_checkpoints_without_the_new_fields_still_load(tmp_path, name):
    config = json.loads((SHIPPED / name / "config.json").read_text())
    assert config["training"]["draft_kv_heads"] is None  # the shipped drafts keep the target's KV heads
    loaded = load_draft(SHIPPED / name)
    # the layout written before the draft-vocabulary and KV-head options existed
    previous = {key: value for key, value in config.items() if key not in ("draft_vocab_size", "draft_vocab_coverage")}
    previous["training"] = {key: value for key, value in config["training"].items()
                            if key not in ("draft_kv_heads", "draft_vocab", "init_draft", "eval_data", "regenerate")}
    before = tmp_path / "before"
    before.mkdir()
    (before / "config.json").write_text(json.dumps(previous))
    shutil.copy(SHIPPED / name / "model.safetensors", before)
    assert load_draft(before).config.num_key_value_heads == 3
    assert loaded.config.num_key_value_heads == 3 and loaded.config.num_attention_heads == 9
    # the oldest layout: only the shape fields (defaults fill the rest)
    minimal = {key: config[key] for key in ("arch", "hidden_size", "num_attention_heads", "num_key_value_heads",
                                            "head_dim", "intermediate_size", "vocab_size")}
    folder = tmp_path / name
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(minimal))
    shutil.copy(SHIPPED / name / "model.safetensors", folder)
    assert DraftConfig.load(folder / "config.json").training == {}
    old = load_draft(folder)
    for key, value in loaded.state_dict().items():
        assert torch.equal(old.state_dict()[key], value)


@pytest.mark.parametrize("arch", ["beagle", "eagle2"])
def test_init_draft_continues_from_a_drafts_weights(tmp_path, target, data, arch):
    first = train(config_for(tmp_path / "first", data, arch=arch, draft_kv_heads=4, max_steps=2), target=target)
    start = load_draft(first, target)
    # lr 0: the weights cannot move, so the result is the starting draft itself (not a fresh initialisation)
    again = train(config_for(tmp_path / "again", data, arch=arch, init_draft=str(first), lr=0.0, max_steps=1),
                  target=target)
    continued = load_draft(again, target)
    assert continued.config.num_key_value_heads == 4  # the starting draft's shape, not the target's GQA
    assert continued.config.training["init_draft"] == str(first)
    for (name, value), (_, expected) in zip(continued.state_dict().items(), start.state_dict().items()):
        assert torch.equal(value, expected), name
    fresh = load_draft(train(config_for(tmp_path / "fresh", data, arch=arch, draft_kv_heads=4, lr=0.0, max_steps=1,
                                        seed=99), target=target), target)
    assert any(not torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), start.state_dict().values()))


def test_init_draft_must_match_the_arch_and_brings_its_heads(tmp_path, target, data):
    first = train(config_for(tmp_path / "first", data, arch="beagle", max_steps=1), target=target)
    with pytest.raises(BeagleError, match="holds an --arch beagle draft, not eagle2; pass --arch beagle"):
        Trainer(config_for(tmp_path / "other", data, arch="eagle2", init_draft=str(first)), target=target)
    with pytest.raises(BeagleError, match="drop --draft-kv-heads"):
        config_for("x", data, init_draft=str(first), draft_kv_heads=4).validate()
