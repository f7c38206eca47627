"""Interactive multi-turn terminal chat (``beagle chat``).

The conversation is rendered with the target's chat template on every turn and the reply is
streamed as tokens are accepted. After each reply a dim status line shows τ (tokens per target
pass) and tokens/s. Commands: ``/stats`` (last reply's statistics), ``/reset`` (forget the
conversation), ``/help``, ``/exit``. Ctrl-C during a reply stops it (the partial answer stays in
the conversation); Ctrl-C or Ctrl-D at the prompt exits.

Input is read line by line from stdin, so a conversation can be piped in.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from dataclasses import replace
from typing import TextIO

from beagle.errors import BeagleError

logger = logging.getLogger(__name__)

USER_PROMPT = "you> "
ASSISTANT_PREFIX = "assistant> "
COMMANDS = {
    "/stats": "statistics of the last reply",
    "/reset": "forget the conversation",
    "/help": "this list",
    "/exit": "leave (also Ctrl-D, or Ctrl-C at the prompt)",
}


class ChatSession:
    """A conversation with ``generator`` (a SpeculativeGenerator): messages and the last reply's stats."""

    def __init__(self, generator, settings, system: str | None = None):
        self.generator = generator
        self.settings = settings
        self.system = system
        self.messages: list[dict] = []
        self.last_stats = None
        self.reset()

    def reset(self) -> None:
        self.messages = [{"role": "system", "content": self.system}] if self.system else []
        self.last_stats = None

    def reply(self, user_text: str):
        """Stream the reply to ``user_text`` as text chunks. The user turn and the (possibly partial,
        when the caller stops early or Ctrl-C interrupts) reply are added to the conversation."""
        target = self.generator.target
        self.messages.append({"role": "user", "content": user_text})
        try:
            prompt_ids = target.encode_chat(self.messages)
        except BeagleError:
            self.messages.pop()
            raise
        room = target.max_length - len(prompt_ids)
        if room < 1:
            self.messages.pop()
            raise BeagleError(
                f"the conversation ({len(prompt_ids)} tokens) fills the model's context ({target.max_length} tokens); "
                "type /reset to start over"
            )
        settings = replace(self.settings, max_new_tokens=min(self.settings.max_new_tokens, room))
        pieces: list[str] = []
        stream = self.generator.stream(prompt_ids, settings)
        interrupted = False
        try:
            for piece in stream:
                pieces.append(piece)
                yield piece
        except KeyboardInterrupt:
            interrupted = True
        finally:
            stream.close()
            self.messages.append({"role": "assistant", "content": "".join(pieces)})
            self.last_stats = self.generator.last_stats
            if interrupted:
                self.last_stats.stop_reason = "interrupted"
        if interrupted:
            raise KeyboardInterrupt


def status_line(stats) -> str:
    return (f"[τ {stats.tau:.2f} · {stats.tokens_per_s:.1f} tokens/s · {stats.new_tokens} tokens · "
            f"{stats.target_passes} target passes]")


def format_stats(stats) -> str:
    data = stats.to_dict()
    times = data["time_s"]
    lines = [
        f"  tokens:          {data['new_tokens']} ({data['stop_reason'] or 'running'})",
        f"  target passes:   {data['target_passes']}",
        f"  τ (tokens/pass): {data['tau']:.2f}",
        f"  speed:           {data['tokens_per_s']:.1f} tokens/s",
    ]
    if data["acceptance_by_depth"]:
        rates = " ".join(f"{rate:.2f}" for rate in data["acceptance_by_depth"])
        lines.append(f"  acceptance by depth: {rates}")
        lines.append(f"  accepted draft tokens per pass (histogram): {data['accept_length_histogram']}")
    lines.append(f"  time: total {times['total']:.3f}s = prefill {times['prefill']:.3f}s + draft {times['draft']:.3f}s"
                 f" + verify {times['verify']:.3f}s + other {times['other']:.3f}s")
    return "\n".join(lines)


def run_chat(
    generator,
    settings,
    *,
    system: str | None = None,
    read_line: Callable[[str], str] = input,
    out: TextIO | None = None,
    echo: bool | None = None,
    color: bool | None = None,
) -> int:
    """The interactive loop. read_line(prompt) returns a line (EOFError / KeyboardInterrupt end the chat);
    echo repeats piped input lines after the prompt (default: when stdin is not a terminal);
    color dims the status line (default: when ``out`` is a terminal and NO_COLOR is unset)."""
    out = out or sys.stdout
    if echo is None:
        echo = not _isatty(sys.stdin)
    if color is None:
        color = _isatty(out) and not os.environ.get("NO_COLOR")
    dim = (lambda text: f"\x1b[2m{text}\x1b[0m") if color else (lambda text: text)
    target = generator.target
    if target.tokenizer is None or not getattr(target.tokenizer, "chat_template", None):
        raise BeagleError(f"{target.name} has no chat template, so it cannot chat; use `beagle generate` instead")
    session = ChatSession(generator, settings, system)
    mode = "plain decoding (no draft)" if generator.draft is None else (
        f"speculative with a {generator.draft.config.arch} draft (tree depth {generator.tree.depth}, "
        f"top-k {generator.tree.top_k}, {generator.tree.total_tokens} tokens)")
    print(f"Beagle chat with {target.name} — {mode}.", file=out)
    print(dim("Commands: /stats /reset /help /exit. Ctrl-C stops a reply; Ctrl-D or Ctrl-C here exits."), file=out)
    while True:
        try:
            out.flush()
            line = read_line(USER_PROMPT)
        except (EOFError, KeyboardInterrupt):
            print(file=out)
            return 0
        if echo:
            print(line, file=out)
        text = line.strip()
        if not text:
            continue
        if text.startswith("/"):
            command = text.split()[0].lower()
            if command in ("/exit", "/quit"):
                return 0
            if command == "/reset":
                session.reset()
                print(dim("(conversation cleared)"), file=out)
            elif command == "/stats":
                if session.last_stats is None:
                    print("no reply yet", file=out)
                else:
                    print(format_stats(session.last_stats), file=out)
            elif command == "/help":
                for name, meaning in COMMANDS.items():
                    print(f"  {name:<7} {meaning}", file=out)
            else:
                print(f"unknown command {command}; type /help", file=out)
            continue
        print(ASSISTANT_PREFIX, end="", file=out, flush=True)
        try:
            for piece in session.reply(line):
                print(piece, end="", file=out, flush=True)
        except KeyboardInterrupt:
            print(dim(" [stopped]"), end="", file=out)
        except BeagleError as error:
            print(f"\nerror: {error}", file=out)
            continue
        print(file=out)
        if session.last_stats is not None:
            print(dim(status_line(session.last_stats)), file=out, flush=True)


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
