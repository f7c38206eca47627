"""Training and datagen outputs under hostile conditions: runs killed mid-save, file modes, writing over an
existing run, resuming with other data or settings, and drafts checked against the target's weights."""

from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from beagle.errors import BeagleError, DataError, IncompatibleDraftError
from beagle.models.checkpoint import build_draft, load_draft, save_draft
from beagle.target_model.model import TargetModel
from beagle.data.batches import ChatDataset
from beagle.data.features import FeatureDataset, generate_features
from beagle.training.trainer import STATE_NAME, TrainConfig, train
from conftest_serving import subprocess_env
from test_training_support import pretokenized, tiny_model, tiny_target, write_jsonl

VOCAB = 97
TESTS = str(Path(__file__).resolve().parent)


@pytest.fixture(scope="module")
def target():
    return tiny_target(VOCAB, seed=0)


@pytest.fixture
def data(tmp_path):
    return write_jsonl(tmp_path / "d.jsonl", pretokenized(6, VOCAB, seed=1, low=12, high=20))


def config(out, data, **overrides) -> TrainConfig:
    settings = dict(data=data, out=str(out), epochs_stage1=1, epochs_stage2=1, batch_size=2, lr=1e-3, warmup=1,
                    heldout_count=1, eval_depth=2, window=3, sim_steps=2, progress=False, tensorboard=False,
                    seed=5, max_steps=1)
    settings.update(overrides)
    return TrainConfig(**settings)


# ------------------------------------------------------------------------ 5. debris of killed runs
def run_until_killed(script: str) -> None:
    """Run ``script`` in a fresh interpreter that dies with os._exit(137) (as under kill -9) where it says."""
    result = subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {TESTS!r})\n" + script],
                            env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 137, result.stderr[-3000:]


KILLED_TRAINING = """
import os
import beagle.models.checkpoint as checkpoint
from beagle.training.trainer import TrainConfig, train
from test_training_support import tiny_target

real = checkpoint.save_file
def save_then_die(*args, **kwargs):  # the weights are written, the rename never happens
    real(*args, **kwargs)
    os._exit(137)
checkpoint.save_file = save_then_die
train(TrainConfig(data={data!r}, out={out!r}, epochs_stage1=1, epochs_stage2=1, batch_size=2, lr=1e-3, warmup=1,
                  heldout_count=1, eval_depth=2, window=3, sim_steps=2, progress=False, tensorboard=False, seed=5,
                  max_steps=1), target=tiny_target(97, seed=0))
"""

KILLED_DATAGEN = """
import os
import beagle.data.features as features
from beagle.data.batches import ChatDataset
from test_training_support import tiny_target

real = features.save_file
calls = []
def save_then_die(*args, **kwargs):  # the second shard is written to its temporary file, then kill -9
    real(*args, **kwargs)
    calls.append(1)
    if len(calls) == 2:
        os._exit(137)
features.save_file = save_then_die
features.generate_features(tiny_target(97, seed=0), ChatDataset.from_file({data!r}, None, 2048), {out!r},
                           shard_size=2, progress=False)
"""


def test_a_killed_training_run_leaves_nothing_behind(tmp_path, data, target):
    out = tmp_path / "run"
    run_until_killed(KILLED_TRAINING.format(data=data, out=str(out)))
    debris = sorted(path.name for path in out.iterdir())
    assert debris and all("draft-staging" in name for name in debris), debris  # what kill -9 leaves
    train(config(out, data), target=target)  # debris is not a run: a fresh start needs no flag, and cleans up
    assert sorted(path.name for path in out.iterdir()) == ["config.json", "model.safetensors", STATE_NAME]
    # the other temporaries a kill can leave: an emptied staging folder, a half-written trainer state
    (out / ".draft-staging").mkdir()
    (out / f".{STATE_NAME}.tmp").write_bytes(b"half a state")
    train(config(out, data, max_steps=2, resume=True), target=target)
    assert sorted(path.name for path in out.iterdir()) == ["config.json", "model.safetensors", STATE_NAME]


def test_a_killed_datagen_leaves_nothing_behind(tmp_path, data, target):
    out = tmp_path / "features"
    run_until_killed(KILLED_DATAGEN.format(data=data, out=str(out)))
    stale = list(out.glob(".shard-00001.safetensors.*.beagle-tmp"))
    assert len(stale) == 1 and stale[0].is_file()  # a whole shard, never renamed
    dataset = ChatDataset.from_file(data, None, 2048)
    with pytest.raises(DataError, match="different run"):  # any later run in the folder removes it first
        generate_features(target, dataset, out, shard_size=3, progress=False)
    assert not stale[0].exists()
    generate_features(target, dataset, out, shard_size=2, progress=False)
    assert not [path.name for path in out.iterdir() if path.name.startswith(".")]
    assert len(FeatureDataset(out)) == 6


def test_save_draft_removes_temporaries_of_killed_saves(tmp_path, target):
    stale = tmp_path / ".mine.k3x_9qz1.beagle-tmp"  # the temporary folder of a save killed mid-write
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"partial")
    legacy = tmp_path / ".mine.k3x_9qz2"  # the same, written by an earlier version
    legacy.mkdir()
    (legacy / "model.safetensors").write_bytes(b"partial")
    unrelated = tmp_path / ".mine.notes"
    unrelated.mkdir()
    (tmp_path / "mine.old").mkdir()  # the user's: never touched
    save_draft(build_draft(target, "beagle"), tmp_path / "mine")
    assert not stale.exists() and not legacy.exists()
    assert unrelated.exists() and (tmp_path / "mine.old").exists()


# ------------------------------------------------------------------------ 6. file modes
@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_weights_get_the_mode_of_any_new_file(tmp_path, data, target, umask):
    previous = os.umask(umask)
    try:
        save_draft(build_draft(target, "beagle"), tmp_path / "draft")
        train(config(tmp_path / "run", data), target=target)
        generate_features(target, ChatDataset.from_file(data, None, 2048), tmp_path / "features", shard_size=4,
                          progress=False)
    finally:
        os.umask(previous)
    file_mode, folder_mode = 0o666 & ~umask, 0o777 & ~umask
    files = [tmp_path / "draft" / "model.safetensors", tmp_path / "draft" / "config.json",
             tmp_path / "run" / "model.safetensors", tmp_path / "run" / "config.json", tmp_path / "run" / STATE_NAME,
             *sorted((tmp_path / "features").glob("shard-*.safetensors")), tmp_path / "features" / "manifest.json"]
    assert {path.name: oct(stat.S_IMODE(path.stat().st_mode)) for path in files} == \
        {path.name: oct(file_mode) for path in files}
    assert oct(stat.S_IMODE((tmp_path / "draft").stat().st_mode)) == oct(folder_mode)


# ------------------------------------------------------------------------ 8. silent overwrite / resume
def test_train_refuses_to_write_over_a_run(tmp_path, data, target):
    out = tmp_path / "run"
    train(config(out, data), target=target)
    stamp = (out / "model.safetensors").read_bytes()
    with pytest.raises(BeagleError, match="--overwrite") as caught:
        train(config(out, data, seed=6), target=target)
    assert "--resume" in str(caught.value)
    assert (out / "model.safetensors").read_bytes() == stamp  # untouched
    (out / "notes.txt").write_text("mine")
    train(config(out, data, seed=6, overwrite=True), target=target)
    assert (out / "model.safetensors").read_bytes() != stamp and (out / "notes.txt").read_text() == "mine"
    assert load_draft(out, target).config.training["seed"] == 6
    with pytest.raises(BeagleError, match="one of them"):
        config(out, data, overwrite=True, resume=True).validate()
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("not a run")
    with pytest.raises(BeagleError, match="not empty"):
        train(config(other, data), target=target)


def test_resume_needs_a_trainer_state_where_a_draft_is(tmp_path, data, target):
    out = tmp_path / "run"
    train(config(out, data), target=target)
    (out / STATE_NAME).unlink()
    with pytest.raises(BeagleError, match="--overwrite"):
        train(config(out, data, resume=True), target=target)


def test_resume_refuses_other_data_or_settings(tmp_path, data, target):
    out = tmp_path / "run"
    train(config(out, data), target=target)
    other_data = write_jsonl(tmp_path / "other.jsonl", pretokenized(6, VOCAB, seed=2, low=12, high=20))
    same_data_elsewhere = write_jsonl(tmp_path / "copy.jsonl", pretokenized(6, VOCAB, seed=1, low=12, high=20))
    for changed, needle in ((dict(data=other_data), "data"), (dict(lr=2e-3), "lr was 0.001"),
                            (dict(noise_std=0.5), "noise_std"), (dict(max_length=16), "data"),
                            (dict(epochs_stage1=3), "epochs_stage1")):
        with pytest.raises(BeagleError, match=needle) as caught:
            train(config(out, changed.pop("data", data), max_steps=2, resume=True, **changed), target=target)
        assert "--resume-anyway" in str(caught.value)
    with pytest.raises(BeagleError, match="other weights"):
        train(config(out, data, max_steps=2, resume=True), target=tiny_target(VOCAB, seed=1))
    # what may change: the length, the layout, the file's name when its contents are the same
    train(config(out, same_data_elsewhere, max_steps=2, resume=True, micro_batch_size=1, epochs_stage2=2),
          target=target)
    assert torch.load(out / STATE_NAME, weights_only=False)["progress"]["step"] == 2


def test_resume_anyway_continues_with_a_warning(tmp_path, data, target, caplog):
    out = tmp_path / "run"
    train(config(out, data), target=target)
    with caplog.at_level(logging.WARNING, logger="beagle.training.trainer"):
        train(config(out, data, max_steps=2, lr=2e-3, resume_anyway=True), target=target)
    assert "lr was 0.001" in caplog.text
    assert torch.load(out / STATE_NAME, weights_only=False)["progress"]["step"] == 2


def test_train_cli_names_the_flags(tmp_path, capsys):
    from beagle.cli.main import main
    from test_training_support import tiny_tokenizer

    folder = tmp_path / "target"
    tokenizer = tiny_tokenizer()
    tiny_model(len(tokenizer), seed=0).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    data = write_jsonl(tmp_path / "chat.jsonl", pretokenized(6, len(tokenizer), seed=1, low=12, high=20))
    argv = ["train", "--target", str(folder), "--data", data, "--out", str(tmp_path / "run"), "--epochs-stage1", "1",
            "--epochs-stage2", "0", "--batch-size", "2", "--warmup", "1", "--heldout", "1", "--window", "3",
            "--sim-steps", "2", "--eval-depth", "2", "--no-progress", "--device", "cpu", "--no-tensorboard",
            "--max-steps", "1"]
    assert main(argv) == 0
    capsys.readouterr()
    assert main(argv) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main([*argv, "--resume", "--lr", "1"]) == 2
    assert "--resume-anyway" in capsys.readouterr().err
    assert main([*argv, "--resume-anyway", "--lr", "1", "--max-steps", "2"]) == 0
    assert main([*argv, "--overwrite"]) == 0


# ------------------------------------------------------------------------ 8. drafts vs the target's weights
def as_dtype(target: TargetModel, dtype) -> TargetModel:
    model = tiny_model(VOCAB, seed=0)
    model.load_state_dict(target.model.state_dict())
    return TargetModel(model.to(dtype), tokenizer=None, name="tiny")


def test_fingerprint_survives_dtypes_and_tells_weights_apart(target):
    from beagle.target_model.fingerprint import same_weights

    mine = target.weights_fingerprint()
    assert as_dtype(target, torch.bfloat16).weights_fingerprint() == mine  # bf16 of the same weights: identical
    assert same_weights(mine, as_dtype(target, torch.float16).weights_fingerprint())
    assert not same_weights(mine, tiny_target(VOCAB, seed=1).weights_fingerprint())
    tuned = as_dtype(target, torch.float32)
    with torch.no_grad():  # a fine-tune: every weight moved by ~5 %
        for weight in (tuned.embed.weight, tuned.lm_head.weight):
            weight.mul_(1 + 0.05 * torch.randn(weight.shape, generator=torch.Generator().manual_seed(0)))
    assert not same_weights(mine, tuned.weights_fingerprint())
    assert len(json.dumps(mine)) < 2000  # small enough for config.json


def test_a_draft_for_other_weights_is_refused(tmp_path, target):
    save_draft(build_draft(target, "beagle"), tmp_path / "draft")
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        assert load_draft(tmp_path / "draft", as_dtype(target, dtype)).config.arch == "beagle"
    with pytest.raises(IncompatibleDraftError, match="other weights"):
        load_draft(tmp_path / "draft", tiny_target(VOCAB, seed=1))  # same shapes, other weights


def test_drafts_without_a_fingerprint_still_load(tmp_path, target, caplog, monkeypatch):
    save_draft(build_draft(target, "beagle"), tmp_path / "old")
    path = tmp_path / "old" / "config.json"
    saved = json.loads(path.read_text())
    del saved["target"]["weights"]  # as written before fingerprints existed
    path.write_text(json.dumps(saved))
    with caplog.at_level(logging.INFO, logger="beagle.models.config"):
        load_draft(tmp_path / "old", tiny_target(VOCAB, seed=1))
    (record,) = [r for r in caplog.records if "no fingerprint" in r.getMessage()]
    assert record.levelno == logging.WARNING
    caplog.clear()
    import beagle.assets.shipped as shipped

    monkeypatch.setattr(shipped, "DRAFTS_DIR", tmp_path)  # as if shipped in drafts/: an INFO line only
    with caplog.at_level(logging.INFO, logger="beagle.models.config"):
        load_draft(tmp_path / "old", target)
    (record,) = [r for r in caplog.records if "no fingerprint" in r.getMessage()]
    assert record.levelno == logging.INFO


@pytest.mark.slow
def test_shipped_drafts_load_for_smollm2_in_both_dtypes(caplog):
    """drafts/ carry the fingerprint of the SmolLM2 weights they were trained on: they load in fp32 and bf16, no warning."""
    from beagle.assets.shipped import shipped_draft_path
    from beagle.target_model.model import load_target

    if shipped_draft_path("smollm2-beagle") is None:
        pytest.skip("shipped drafts not present")
    for dtype in ("float32", "bfloat16"):
        smollm2 = load_target("smollm2", dtype=dtype, device="cpu")
        for name in ("smollm2-beagle", "smollm2-eagle2"):
            with caplog.at_level(logging.INFO, logger="beagle.models.config"):
                draft = load_draft(name, smollm2)
            assert draft.config.arch == name.split("-")[1]
            assert draft.config.target.get("weights"), f"{name} has no weight fingerprint"
    assert not [record for record in caplog.records if record.levelno >= logging.WARNING]
    assert not [record for record in caplog.records if "no fingerprint" in record.getMessage()]
    del smollm2


def test_features_from_other_weights_are_refused(tmp_path, data, target):
    features = generate_features(target, ChatDataset.from_file(data, None, 2048), tmp_path / "f", progress=False)
    with pytest.raises(DataError, match="weights"):
        train(config(tmp_path / "run", None, features=str(features)), target=tiny_target(VOCAB, seed=1))
    with pytest.raises(DataError, match="weights"):  # nor resumed into by another target
        generate_features(tiny_target(VOCAB, seed=1), ChatDataset.from_file(data, None, 2048), tmp_path / "f",
                          progress=False)
    train(config(tmp_path / "run", None, features=str(features)), target=target)
