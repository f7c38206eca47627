"""docs/cli.md is the argparse parser rendered by beagle.cli.reference: regenerating it must give the committed file."""

from pathlib import Path

from beagle.cli.main import build_parser
from beagle.cli.reference import REGENERATE, render

ROOT = Path(__file__).resolve().parents[1]


def test_committed_reference_matches_the_parser():
    committed = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    assert render() == committed, f"docs/cli.md is out of date with the CLI: run `{REGENERATE}`"


def test_reference_lists_every_subcommand_and_flag():
    text = render()
    parser = build_parser()
    commands = next(action for action in parser._actions if hasattr(action, "choices") and action.choices)
    for name, command in commands.choices.items():
        assert f"## beagle {name}\n" in text
        for action in command._actions:
            for flag in action.option_strings:
                if flag not in ("-h", "--help"):
                    assert f"`{flag}" in text, (name, flag)


def test_reference_does_not_depend_on_the_terminal(monkeypatch):
    monkeypatch.setenv("COLUMNS", "40")
    narrow = render()
    monkeypatch.setenv("COLUMNS", "250")
    assert render() == narrow
