"""``beagle chat``: piped multi-turn conversation through the real CLI, and Ctrl-C handling in-process."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest

from conftest_serving import one_torch_thread, save_tiny_target, small_tree, subprocess_env, tiny_draft, tiny_target


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    from beagle.models.checkpoint import save_draft

    root = tmp_path_factory.mktemp("chat")
    target_dir = save_tiny_target(root / "target")
    draft_dir = root / "draft"
    with one_torch_thread():
        save_draft(tiny_draft(tiny_target()), draft_dir)
    return target_dir, str(draft_dir)


def reference_replies(target_dir: str, turns: list[str], max_new_tokens: int) -> list[str]:
    """Plain greedy decoding of the same conversation (the target reloaded from its folder, as the CLI does)."""
    from beagle.decoding.engine import SpeculativeGenerator
    from beagle.target_model.model import load_target

    target = load_target(target_dir, device="cpu")
    plain = SpeculativeGenerator(target)
    messages, replies = [], []
    for turn in turns:
        messages.append({"role": "user", "content": turn})
        reply = plain.generate(target.encode_chat(messages), max_new_tokens=max_new_tokens).text
        messages.append({"role": "assistant", "content": reply})
        replies.append(reply)
    return replies


def test_piped_conversation(folders):
    target_dir, draft_dir = folders
    turns = ["hello world", "the people of the water"]
    stdin = "\n".join(turns + ["/stats", "/reset", "/stats", "/exit", "never read"]) + "\n"
    command = [sys.executable, "-m", "beagle.cli.main", "chat", "--target", target_dir, "--draft", draft_dir,
               "--max-new-tokens", "12", "--depth", "3", "--tree-top-k", "4", "--total-tokens", "10"]
    result = subprocess.run(command, input=stdin, capture_output=True, text=True, env=subprocess_env(), timeout=120)
    assert result.returncode == 0, result.stderr
    output = result.stdout
    with one_torch_thread():
        expected = reference_replies(target_dir, turns, 12)
    replies = [line[len("assistant> "):] for line in output.splitlines() if line.startswith("assistant> ")]
    assert replies == expected  # multi-turn: the second reply saw the first one
    status = [line for line in output.splitlines() if line.startswith("[τ ")]
    assert len(status) == 2 and all("tokens/s" in line for line in status)
    assert "\x1b[" not in output  # no colour codes when piped
    stats_block = output.split("you> /stats", 1)[1]
    assert "target passes:   " in stats_block and "τ (tokens/pass)" in stats_block
    assert "(conversation cleared)" in output
    assert "no reply yet" in output.split("(conversation cleared)", 1)[1]
    assert "never read" not in output


def test_end_of_input_exits_cleanly(folders):
    target_dir, _ = folders
    command = [sys.executable, "-m", "beagle.cli.main", "chat", "--target", target_dir, "--max-new-tokens", "4"]
    result = subprocess.run(command, input="hello\n", capture_output=True, text=True, env=subprocess_env(),
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert "plain decoding" in result.stdout and result.stdout.count("[τ 1.00") == 1


class InterruptingGenerator:
    """Wraps a generator; the first reply raises KeyboardInterrupt after ``after`` chunks (a Ctrl-C)."""

    def __init__(self, inner, after: int):
        self.inner = inner
        self.after = after
        self.interrupts = 1

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def stream(self, prompt_ids, settings):
        for index, piece in enumerate(self.inner.stream(prompt_ids, settings)):
            if index == self.after and self.interrupts:
                self.interrupts -= 1
                raise KeyboardInterrupt
            yield piece


def test_ctrl_c_stops_the_reply_and_keeps_the_partial_answer():
    from beagle.decoding.engine import SpeculativeGenerator
    from beagle.decoding.sampling import GenerationSettings
    from beagle.serving.chat import ChatSession, run_chat

    with one_torch_thread():
        target = tiny_target()
        inner = SpeculativeGenerator(target, tiny_draft(target), small_tree())
        settings = GenerationSettings(max_new_tokens=10)

        session = ChatSession(InterruptingGenerator(inner, after=3), settings, system="be brief")
        pieces = []
        with pytest.raises(KeyboardInterrupt):
            for piece in session.reply("hello world"):
                pieces.append(piece)
        assert len(pieces) == 3
        assert session.messages[-1] == {"role": "assistant", "content": "".join(pieces)}
        assert session.last_stats.stop_reason == "interrupted"
        second = "".join(session.reply("water"))  # the conversation goes on, partial answer included
        plain = SpeculativeGenerator(target).generate(target.encode_chat(session.messages[:-1]), settings)
        assert second == plain.text
        assert [m["role"] for m in session.messages] == ["system", "user", "assistant", "user", "assistant"]

        lines = iter(["hello world", "/stats", "the people"])

        def read_line(prompt):
            try:
                return next(lines)
            except StopIteration:
                raise KeyboardInterrupt from None  # Ctrl-C at the prompt exits

        out = io.StringIO()
        code = run_chat(InterruptingGenerator(inner, after=2), settings, read_line=read_line, out=out, echo=True,
                        color=True)
    text = out.getvalue()
    assert code == 0
    assert "[stopped]" in text
    assert "interrupted" in text  # /stats of the stopped reply
    assert text.count("\x1b[2m[τ") == 2  # a dim status line after both replies
