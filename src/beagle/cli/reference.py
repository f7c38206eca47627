"""Write the CLI reference (docs/cli.md) from the ``beagle`` argparse parser, so it cannot drift from ``--help``.

    PYTHONPATH=src python -m beagle.cli.reference > docs/cli.md

``tests/test_cli_reference.py`` regenerates it and compares it with the committed file. The text depends only
on the parser (fixed line width, no terminal size, no environment), so any machine writes the same file.
"""

from __future__ import annotations

import argparse

from beagle.cli.main import build_parser

USAGE_WIDTH = 100
REGENERATE = "PYTHONPATH=src python -m beagle.cli.reference > docs/cli.md"

HEADER = f"""# `beagle` command-line reference

Generated from the argparse parser by `{REGENERATE}`; a test fails when this file and the parser disagree.
What the commands do, with examples, is in [usage.md](usage.md) (generate, chat, demo, bench, serve) and
[training.md](training.md) (regenerate, datagen, vocab, train).
"""


def _usage(parser: argparse.ArgumentParser) -> str:
    formatter = argparse.HelpFormatter(prog=parser.prog, width=USAGE_WIDTH)
    formatter.add_usage(parser.usage, parser._actions, parser._mutually_exclusive_groups)
    return formatter.format_help().strip()


def _flags(action: argparse.Action) -> str:
    if not action.option_strings:
        return f"`{action.metavar or action.dest}`"
    shown = action.metavar if isinstance(action.metavar, str) else None
    if action.nargs == 0:
        return ", ".join(f"`{flag}`" for flag in action.option_strings)
    value = shown or (("{" + ",".join(map(str, action.choices)) + "}") if action.choices else action.dest.upper())
    suffix = " ..." if action.nargs in ("+", "*") else ""
    return ", ".join(f"`{flag} {value}{suffix}`" for flag in action.option_strings)


def _default(action: argparse.Action) -> str:
    """The default when it says something (not None, False, an empty list or argparse's SUPPRESS)."""
    default = action.default
    if action.nargs == 0 or default in (None, [], "", argparse.SUPPRESS):
        return ""
    return f"`{default}`"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _options_table(parser: argparse.ArgumentParser) -> list[str]:
    rows = ["| option | default | meaning |", "|---|---|---|"]
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        required = " (required)" if action.required and action.option_strings else ""
        help_text = action.help % dict(vars(action), prog=parser.prog) if action.help else ""
        rows.append(f"| {_flags(action)}{required} | {_default(action)} | {_cell(help_text)} |")
    return rows


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def render(parser: argparse.ArgumentParser | None = None) -> str:
    """The whole reference as Markdown: the global flags, then every subcommand in ``beagle --help`` order."""
    parser = parser or build_parser()
    commands = _subcommands(parser)
    lines = [HEADER, "```", _usage(parser), "```", "", *_options_table(parser), "",
             "Commands: " + ", ".join(f"[`{name}`](#beagle-{name})" for name in commands) + ".", ""]
    for name, command in commands.items():
        lines += [f"## beagle {name}", ""]
        if command.description:
            lines += [command.description.strip(), ""]
        lines += ["```", _usage(command), "```", "", *_options_table(command), ""]
        if command.epilog:  # written for a terminal (RawDescriptionHelpFormatter): kept as preformatted text
            lines += ["```text", command.epilog.strip("\n"), "```", ""]
    return "\n".join(lines).rstrip("\n") + "\n"


def main() -> None:
    print(render(), end="")


if __name__ == "__main__":
    main()
