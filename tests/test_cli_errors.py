"""CLI input errors are one line on stderr and exit status 2 (no traceback)."""

from beagle.cli.main import main


def test_unreadable_prompt_file(capsys, tmp_path):
    assert main(["generate", "--target", str(tmp_path / "no-model"), "--prompt-file", str(tmp_path / "missing.txt")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot read --prompt-file") and "Traceback" not in err
