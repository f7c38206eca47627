"""`beagle train` / `beagle datagen` end to end on a tiny target saved to disk."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from beagle.cli.main import main
from beagle.models.checkpoint import load_draft
from beagle.target_model.model import load_target
from test_training_support import conversations, tiny_model, tiny_tokenizer, write_jsonl

SRC = str(Path(__file__).resolve().parents[1] / "src")
COMMON = ["--epochs-stage1", "1", "--epochs-stage2", "1", "--batch-size", "2", "--warmup", "1", "--heldout", "1",
          "--window", "3", "--sim-steps", "2", "--eval-depth", "2", "--no-progress", "--device", "cpu"]


@pytest.fixture(scope="module")
def target_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-target")
    tokenizer = tiny_tokenizer()
    tiny_model(len(tokenizer), seed=0).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("data") / "chat.jsonl", conversations(12, seed=4))


def test_train_cli_subprocess_writes_a_loadable_checkpoint(tmp_path, target_dir, data_file):
    out = tmp_path / "draft"
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    result = subprocess.run(
        [sys.executable, "-m", "beagle.cli.main", "train", "--target", str(target_dir), "--data", data_file,
         "--out", str(out), "--max-steps", "3", *COMMON],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "parameters" in result.stderr and "draft written to" in result.stdout
    target = load_target(str(target_dir), device="cpu")
    draft = load_draft(out, target)
    assert draft.config.training["step"] == 3
    assert (out / "trainer_state.pt").is_file()
    assert any((out / "logs").iterdir())  # TensorBoard events


def test_datagen_then_train_from_features(tmp_path, target_dir, data_file, capsys):
    features = tmp_path / "features"
    assert main(["datagen", "--target", str(target_dir), "--data", data_file, "--out", str(features),
                 "--shard-size", "5", "--no-progress", "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    assert "needs about" in captured.err and "KiB" in captured.err and "12 kept" in captured.err
    assert len(list(features.glob("shard-*.safetensors"))) == 3
    out = tmp_path / "eagle"
    assert main(["train", "--target", str(target_dir), "--features", str(features), "--arch", "eagle2",
                 "--out", str(out), "--max-steps", "2", "--ttt-steps", "2", "--no-tensorboard", *COMMON]) == 0
    assert load_draft(out).config.arch == "eagle2"


def test_train_cli_errors_and_help(tmp_path, target_dir, data_file, capsys):
    # --ttt-steps is an EAGLE-2 option: a one-line error, exit status 2
    assert main(["train", "--target", str(target_dir), "--data", data_file, "--out", str(tmp_path / "x"),
                 "--ttt-steps", "3", *COMMON]) == 2
    assert "eagle2" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "parameter_formula" in capsys.readouterr().out
