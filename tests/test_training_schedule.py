"""Learning-rate schedules: warm-up then constant / cosine / linear, recorded in checkpoints, resumed exactly."""

import math

import pytest
import torch

from beagle.cli.main import main
from beagle.errors import BeagleError
from beagle.models.checkpoint import load_draft
from beagle.training.checkpointing import STATE_NAME
from beagle.training.config import TrainConfig
from beagle.training.schedule import LRSchedule
from beagle.training.trainer import Trainer, train
from test_training_support import pretokenized, tiny_target, write_jsonl

VOCAB = 97


@pytest.fixture(scope="module")
def target():
    return tiny_target(VOCAB, seed=0)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    # 10 sequences, 2 held out, batch 2: 4 steps per epoch, 8 planned steps over 2 epochs
    return write_jsonl(tmp_path_factory.mktemp("data") / "d.jsonl", pretokenized(10, VOCAB, seed=1, low=12, high=24))


def config_for(out, data, **overrides):
    base = dict(data=data, out=str(out), epochs_stage1=1, epochs_stage2=1, batch_size=2, micro_batch_size=1,
                lr=1e-3, warmup=2, heldout_count=2, eval_depth=2, window=3, sim_steps=2, progress=False,
                tensorboard=False, seed=3)
    base.update(overrides)
    return TrainConfig(**base)


@pytest.mark.parametrize("warmup", [0, 1, 3, 7])
def test_constant_is_the_former_warmup_then_constant_factor(warmup):
    schedule = LRSchedule("constant", warmup, total_steps=20)
    for step in range(20):
        former = min(1.0, (step + 1) / warmup) if warmup else 1.0
        assert schedule.factor(step) == former  # exactly: the default changes no learning rate


def test_cosine_and_linear_decay_from_the_peak_to_the_minimum_at_the_last_planned_step():
    total, warmup, ratio = 12, 2, 0.1
    cosine, linear = LRSchedule("cosine", warmup, total, ratio), LRSchedule("linear", warmup, total, ratio)
    assert [cosine.factor(step) for step in range(warmup)] == [0.5, 1.0]  # warm-up as before
    assert linear.factor(warmup - 1) == 1.0
    factors = [cosine.factor(step) for step in range(warmup - 1, total)]
    assert all(later < earlier for earlier, later in zip(factors, factors[1:]))
    assert cosine.factor(total - 1) == pytest.approx(ratio) and linear.factor(total - 1) == pytest.approx(ratio)
    middle = warmup - 1 + (total - warmup) // 2  # p = 1/2
    assert cosine.factor(middle) == pytest.approx(ratio + (1 - ratio) * 0.5)
    assert linear.factor(middle) == pytest.approx(ratio + (1 - ratio) * 0.5)
    assert cosine.factor(warmup) == pytest.approx(ratio + (1 - ratio) * 0.5 * (1 + math.cos(math.pi / 10)))
    assert cosine.factor(total + 5) == pytest.approx(ratio)  # past the plan: stays at the minimum


def test_trainer_follows_the_schedule_over_the_planned_steps(tmp_path, target, data):
    trainer = Trainer(config_for(tmp_path / "run", data, lr_schedule="linear", min_lr_ratio=0.25, max_steps=3), target)
    assert trainer.schedule == LRSchedule("linear", 2, 8, 0.25)  # 2 epochs x 4 steps, whatever --max-steps
    rates = []
    for _ in range(8):
        rates.append(trainer.optimizer.param_groups[0]["lr"])
        trainer.optimizer.step()
        trainer.scheduler.step()
    assert rates == pytest.approx([1e-3 * trainer.schedule.factor(step) for step in range(8)])
    assert rates[1] == pytest.approx(1e-3) and rates[-1] == pytest.approx(0.25e-3)


def test_cosine_resume_is_exact_and_recorded(tmp_path, target, data):
    full = train(config_for(tmp_path / "a", data, lr_schedule="cosine", min_lr_ratio=0.1, max_steps=7), target=target)
    train(config_for(tmp_path / "b", data, lr_schedule="cosine", min_lr_ratio=0.1, max_steps=3), target=target)
    resumed = train(config_for(tmp_path / "b", data, lr_schedule="cosine", min_lr_ratio=0.1, max_steps=7,
                               resume=True), target=target)
    a = load_draft(full, target, dtype=torch.float32).state_dict()
    b = load_draft(resumed, target, dtype=torch.float32).state_dict()
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    state = torch.load(resumed / STATE_NAME, weights_only=False)
    assert state["lr_schedule"] == {"kind": "cosine", "warmup": 2, "total_steps": 8, "min_ratio": 0.1}
    assert state["config"]["lr_schedule"] == "cosine" and state["config"]["min_lr_ratio"] == 0.1
    training = load_draft(resumed).config.training
    assert (training["lr_schedule"], training["min_lr_ratio"], training["lr_total_steps"]) == ("cosine", 0.1, 8)
    assert state["scheduler"]["last_epoch"] == 7


def test_resume_keeps_the_saved_curve_and_refuses_another_schedule(tmp_path, target, data):
    out = tmp_path / "run"
    train(config_for(out, data, lr_schedule="cosine", max_steps=2), target=target)
    with pytest.raises(BeagleError, match="lr_schedule was 'cosine', now 'linear'"):
        Trainer(config_for(out, data, lr_schedule="linear", resume=True), target).maybe_resume()
    longer = Trainer(config_for(out, data, lr_schedule="cosine", epochs_stage2=3, resume=True), target)
    assert longer.schedule.total_steps == 16
    longer.maybe_resume()  # --epochs-stage2 may change: the saved run's curve (8 planned steps) continues
    assert longer.schedule == LRSchedule("cosine", 2, 8, 0.0)
    assert longer.optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * longer.schedule.factor(2))


def test_states_without_a_schedule_resume_as_warmup_then_constant(tmp_path, target, data):
    out = tmp_path / "run"
    train(config_for(out, data, max_steps=2), target=target)
    state = torch.load(out / STATE_NAME, weights_only=False)
    del state["lr_schedule"], state["config"]["lr_schedule"], state["config"]["min_lr_ratio"]
    torch.save(state, out / STATE_NAME)  # as written before schedules were recorded
    trainer = Trainer(config_for(out, data, resume=True), target)
    trainer.maybe_resume()
    assert trainer.schedule == LRSchedule("constant", 2, 8, 0.0) and trainer.progress.step == 2


def test_cli_lr_schedule_options(tmp_path, capsys):
    common = ["train", "--target", "t", "--data", "d", "--out", str(tmp_path / "x"), "--device", "cpu"]
    with pytest.raises(SystemExit):
        main([*common, "--lr-schedule", "step"])
    assert "invalid choice: 'step'" in capsys.readouterr().err
    assert main([*common, "--lr-schedule", "cosine", "--min-lr-ratio", "1.5"]) == 2
    assert "--min-lr-ratio is a fraction of --lr" in capsys.readouterr().err
