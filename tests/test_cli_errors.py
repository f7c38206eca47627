"""CLI input errors are one line on stderr and exit status 2 (no traceback)."""

from beagle.cli.main import main


def test_unreadable_prompt_file(capsys, tmp_path):
    assert main(["generate", "--target", str(tmp_path / "no-model"), "--prompt-file", str(tmp_path / "missing.txt")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot read --prompt-file") and "Traceback" not in err


# ----------------------------------------------------------------------------- hostile inputs (issue 15)
import json  # noqa: E402
import shutil  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from test_training_support import conversations, tiny_model, tiny_tokenizer, write_jsonl  # noqa: E402


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A tiny target (HF folder), a draft trained for it, damaged copies of both, an empty folder, data files."""
    from beagle.models.checkpoint import build_draft, save_draft
    from beagle.target_model.model import TargetModel

    root = tmp_path_factory.mktemp("hostile")
    tokenizer = tiny_tokenizer()
    model = tiny_model(len(tokenizer), seed=0)
    model.save_pretrained(root / "target")
    tokenizer.save_pretrained(root / "target")
    save_draft(build_draft(TargetModel(model, tokenizer, name="tiny"), "beagle"), root / "draft")
    for name, file in (("target", "model.safetensors"), ("draft", "model.safetensors")):
        shutil.copytree(root / name, root / f"cut-{name}")
        weights = (root / name / file).read_bytes()
        (root / f"cut-{name}" / file).write_bytes(weights[: len(weights) // 3])  # truncated
    shutil.copytree(root / "draft", root / "garbled-draft")
    (root / "garbled-draft" / "model.safetensors").write_bytes(b"\x00" * 64)  # corrupt header
    (root / "empty").mkdir()
    good = [json.dumps(record) for record in conversations(6, seed=1)]
    deep = '{"messages": ' + "[" * 50_000 + "]" * 50_000 + "}"
    (root / "deep-list.json").write_text("[" + ",".join(good + [deep] + good) + "]")
    (root / "deep-object.json").write_text(deep)
    write_jsonl(root / "chat.jsonl", conversations(8, seed=2))
    return root


def _fails_cleanly(capsys, argv, *needles):
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


GENERATE = ["generate", "--prompt", "hello", "--max-new-tokens", "2", "--device", "cpu"]


def test_damaged_weights(capsys, folders):
    target = str(folders / "target")
    for draft in ("cut-draft", "garbled-draft"):
        _fails_cleanly(capsys, ["info", str(folders / draft)], "damaged")
        _fails_cleanly(capsys, [*GENERATE, "--target", target, "--draft", str(folders / draft)], "damaged")
    _fails_cleanly(capsys, [*GENERATE, "--target", str(folders / "cut-target")], "damaged")


def test_folders_that_are_not_targets(capsys, folders):
    _fails_cleanly(capsys, [*GENERATE, "--target", str(folders / "empty")], "no config.json")
    _fails_cleanly(capsys, [*GENERATE, "--target", str(folders / "draft")], "draft checkpoint", "--draft")


def test_devices_that_do_not_exist(capsys, folders):
    target = str(folders / "target")
    _fails_cleanly(capsys, [*GENERATE[:-2], "--target", target, "--device", "tpu"], "tpu")
    if not torch.cuda.is_available():
        _fails_cleanly(capsys, [*GENERATE[:-2], "--target", target, "--device", "cuda"], "--device cpu")
    _fails_cleanly(capsys, ["train", "--target", target, "--data", str(folders / "chat.jsonl"), "--out",
                            str(folders / "never"), "--device", "tpu"], "tpu")
    assert not (folders / "never").exists()


def test_sampling_values_that_cannot_be_sampled(capsys, folders):
    target = str(folders / "target")
    _fails_cleanly(capsys, [*GENERATE, "--target", target, "--temperature", "nan"], "temperature")
    _fails_cleanly(capsys, [*GENERATE, "--target", target, "--temperature", "inf"], "temperature")
    _fails_cleanly(capsys, [*GENERATE, "--target", target, "--temperature", "1", "--seed", str(2**64)], "seed")
    assert main([*GENERATE, "--target", target, "--temperature", "1e-40", "--json"]) == 0  # greedy
    tiny = json.loads(capsys.readouterr().out)
    assert main([*GENERATE, "--target", target, "--json"]) == 0
    assert tiny["token_ids"] == json.loads(capsys.readouterr().out)["token_ids"]


TRAIN = ["--epochs-stage1", "1", "--epochs-stage2", "0", "--batch-size", "2", "--warmup", "1", "--heldout", "1",
         "--window", "3", "--sim-steps", "2", "--eval-depth", "2", "--no-progress", "--device", "cpu",
         "--no-tensorboard", "--max-steps", "1"]


def test_a_truncated_trainer_state(capsys, folders, tmp_path):
    target, data, out = str(folders / "target"), str(folders / "chat.jsonl"), tmp_path / "run"
    assert main(["train", "--target", target, "--data", data, "--out", str(out), *TRAIN]) == 0
    capsys.readouterr()
    state = (out / "trainer_state.pt").read_bytes()
    (out / "trainer_state.pt").write_bytes(state[: len(state) // 2])
    _fails_cleanly(capsys, ["train", "--target", target, "--data", data, "--out", str(out), *TRAIN, "--resume"],
                   "damaged", "--overwrite")


def test_deeply_nested_json_data(capsys, folders, tmp_path):
    target = str(folders / "target")
    for data in ("deep-list.json", "deep-object.json"):
        path = str(folders / data)
        _fails_cleanly(capsys, ["train", "--target", target, "--data", path, "--out", str(tmp_path / data), *TRAIN],
                       "nested")
        _fails_cleanly(capsys, ["datagen", "--target", target, "--data", path, "--out", str(tmp_path / f"f-{data}"),
                                "--no-progress", "--device", "cpu"], "nested")
    deep_lines = tmp_path / "deep.jsonl"  # JSONL: the deep line is skipped and counted, the rest is used
    deep_lines.write_text((folders / "chat.jsonl").read_text() + (folders / "deep-object.json").read_text() + "\n")
    assert main(["datagen", "--target", target, "--data", str(deep_lines), "--out", str(tmp_path / "f"),
                 "--no-progress", "--device", "cpu"]) == 0
    assert "nested_too_deeply: 1" in capsys.readouterr().err
