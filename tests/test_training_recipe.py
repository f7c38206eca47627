"""The recipe options of `beagle train` (#24): the first position's loss weight, the input noise and its scale."""

import json

import pytest
import torch

from beagle.cli.main import main
from beagle.errors import BeagleError
from beagle.models.beagle.objective import BeagleStage1, BeagleStage2
from beagle.models.checkpoint import build_draft
from beagle.models.settings import ObjectiveSettings
from beagle.training.trainer import train
from test_training import sequence_batch
from test_training_options import config_for
from test_training_support import pretokenized, tiny_target, write_jsonl

VOCAB = 97


@pytest.fixture(scope="module")
def target():
    return tiny_target(VOCAB, seed=0)


def test_stage2_first_position_weight_scales_beta_1():
    assert BeagleStage2(ObjectiveSettings(sim_steps=4, first_position_weight=1.0)).weights == \
        pytest.approx([0.4, 0.3, 0.2, 0.1])
    assert BeagleStage2(ObjectiveSettings(sim_steps=4, first_position_weight=0.5)).weights == \
        pytest.approx([2 / 8, 3 / 8, 2 / 8, 1 / 8])


def test_stage1_first_position_weight_is_a_weighted_mean(target):
    """Loss with weight w on window position 1 = sum of w·l over rows / sum of the weights; w = 1 is the plain mean."""
    batch = sequence_batch(target, [30, 21], seed=8)
    torch.manual_seed(4)
    draft = build_draft(target, "beagle")
    plain = BeagleStage1(ObjectiveSettings(window=4, noise="none"))
    counts = plain.counts(batch).double()
    base = float(plain(draft, batch, counts, backward=False).loss.detach())
    for weight in (1.0, 3.0, 0.25):
        objective = BeagleStage1(ObjectiveSettings(window=4, noise="none", first_position_weight=weight))
        loss = float(objective(draft, batch, counts, backward=False).loss.detach())
        if weight == 1.0:
            assert loss == base
        else:
            # decompose: loss = (w·S1 + S_rest) / (w·n1 + n_rest), with S the summed row losses
            high = BeagleStage1(ObjectiveSettings(window=4, noise="none", first_position_weight=1e6))
            first_mean = float(high(draft, batch, counts, backward=False).loss.detach())  # ≈ S1 / n1
            n1, rest = float(counts[0]), float(counts[1:].sum())
            s_rest = base * (n1 + rest) - first_mean * n1
            expected = (weight * first_mean * n1 + s_rest) / (weight * n1 + rest)
            assert loss == pytest.approx(expected, rel=1e-4)


def test_recipe_options_train_and_are_recorded(tmp_path, target):
    data = write_jsonl(tmp_path / "d.jsonl", pretokenized(10, VOCAB, seed=1, low=12, high=24))
    out = train(config_for(tmp_path / "b", data, first_position_weight=2.0, noise="uniform", noise_std=0.0577,
                           max_steps=2), target=target)
    training = json.loads((out / "config.json").read_text())["training"]
    assert training["first_position_weight"] == 2.0 and training["noise"] == "uniform"
    assert training["noise_std"] == 0.0577
    with pytest.raises(BeagleError, match="first_position_weight|first-position-weight"):
        config_for(tmp_path / "e", data, arch="eagle2", first_position_weight=2.0).validate()
    with pytest.raises(BeagleError, match="--first-position-weight must be positive"):
        config_for(tmp_path / "z", data, first_position_weight=0.0).validate()


def test_recipe_options_on_the_command_line(capsys):
    for bad in (["--noise", "pink"], ["--arch", "eagle2", "--first-position-weight", "2"], ["--noise-std", "-1"]):
        try:
            code = main(["train", "--target", "t", "--data", "d.jsonl", "--out", "o", *bad])
        except SystemExit as stop:  # argparse's own errors (an unknown choice)
            code = stop.code
        assert code == 2, bad
        assert capsys.readouterr().err.strip().splitlines()[-1].startswith(("error", "usage", "beagle"))
