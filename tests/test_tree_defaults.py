"""The tree used when none is given depends on the device: small on a CPU (CPU_TREE), 5/10/60 elsewhere;
explicit CLI values win field by field."""

import argparse

from beagle.cli.common import add_tree_args, tree_settings
from beagle.decoding.engine import SpeculativeGenerator
from beagle.decoding.tree import CPU_TREE, TreeSettings, default_tree
from beagle.models.checkpoint import build_draft
from tests.conftest import make_tiny_target


def test_default_tree_by_device():
    assert default_tree("cpu") == TreeSettings(**CPU_TREE)
    assert default_tree("cuda:0") == TreeSettings(5, 10, 60)
    assert default_tree("mps") == TreeSettings(5, 10, 60)
    assert CPU_TREE["total_tokens"] + 1 <= 12  # root + draft tokens: a pass that costs about one step on a CPU


def test_cli_tree_defaults_and_overrides():
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default=None)
    add_tree_args(parser)
    assert tree_settings(parser.parse_args(["--device", "cpu"])) == TreeSettings(**CPU_TREE)
    assert tree_settings(parser.parse_args(["--device", "cuda"])) == TreeSettings(5, 10, 60)
    mixed = tree_settings(parser.parse_args(["--device", "cpu", "--total-tokens", "4"]))
    assert mixed == TreeSettings(CPU_TREE["depth"], CPU_TREE["top_k"], 4)


def test_generator_without_a_tree_takes_the_devices():
    target = make_tiny_target("llama")
    generator = SpeculativeGenerator(target, build_draft(target, "beagle"))
    assert generator.tree == TreeSettings(**CPU_TREE)
