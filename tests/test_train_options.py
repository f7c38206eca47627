"""`beagle train` options are built from TrainConfig's field metadata: same flags, same defaults."""

import argparse
import dataclasses

import pytest

from beagle.cli import train as train_cli
from beagle.models import registry
from beagle.training.config import TrainConfig

REQUIRED = ["--target", "t", "--data", "d", "--out", "o"]


def parse(argv):
    parser = argparse.ArgumentParser()
    train_cli.register(parser.add_subparsers())
    return parser.parse_args(["train", *argv])


def test_defaults_are_the_config_defaults():
    config = train_cli.config_from_args(parse(REQUIRED))
    expected = TrainConfig(target="t", data="d", out="o")
    assert dataclasses.asdict(config) == dataclasses.asdict(expected)


def test_every_option_field_is_a_flag_and_reaches_the_config():
    fields = {item.name: item for item in train_cli.cli_fields()}
    assert {"arch", "epochs_stage1", "heldout_count", "progress", "tensorboard", "lr_schedule"} <= set(fields)
    args = parse([*REQUIRED, "--heldout", "3", "--no-progress", "--no-tensorboard", "--arch", registry.names()[-1],
                  "--lr-schedule", "cosine", "--min-lr-ratio", "0.1", "--epochs-stage1", "2", "--resume",
                  "--draft-vocab", "64", "--fsdp", "none", "--lr", "0.5"])
    config = train_cli.config_from_args(args)
    assert (config.heldout_count, config.progress, config.tensorboard, config.arch) == (3, False, False,
                                                                                        registry.names()[-1])
    assert (config.lr_schedule, config.min_lr_ratio, config.epochs_stage1, config.resume) == ("cosine", 0.1, 2, True)
    assert (config.draft_vocab, config.lr) == ("64", 0.5)


def test_arch_choices_and_default_come_from_the_registry():
    parser = argparse.ArgumentParser()
    train_cli.register(parser.add_subparsers())
    train = parser._subparsers._group_actions[0].choices["train"]
    arch = next(a for a in train._actions if a.dest == "arch")
    assert tuple(arch.choices) == registry.names() and arch.default == registry.default_name()
    ttt = next(a for a in train._actions if a.dest == "ttt_steps")
    assert f"--arch {' / '.join(registry.taking_option('ttt_steps'))} only" in ttt.help
    with pytest.raises(SystemExit):
        parse([*REQUIRED, "--arch", "not-an-architecture"])


def test_building_the_command_line_imports_no_torch():
    """The registry and TrainConfig are read at parser build: `beagle --help` must stay free of torch."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    src = str(Path(__file__).resolve().parents[1] / "src")
    code = ("import sys; from beagle.cli.main import build_parser; build_parser(); "
            "from beagle.models import registry; assert registry.names(); "
            "print(sorted(name for name in ('torch', 'transformers') if name in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": src})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"
