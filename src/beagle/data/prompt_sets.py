"""Benchmark prompts: MT-Bench, HumanEval, held-out ShareGPT, or a JSONL file.

Every prompt becomes a :class:`BenchPrompt`: an id, a category, the user *turns* (each one
timed) and optional fixed *context* messages (a system prompt or an earlier exchange).

Prompt formats (all rendered with the target's chat template, see :func:`prompt_ids`):

- ``mt-bench``: the 80 questions, two turns each, with their category. Turn 2 is asked with
  the benchmark's shared turn-1 answer in context (the harness uses our greedy AR answer).
- ``humaneval``: the 164 tasks, category ``humaneval``; the raw completion prompt (function
  signature + docstring) is sent as the *user message of the chat template*, as EAGLE's
  HumanEval evaluation does, not as a raw completion prompt.
- ``sharegpt-heldout``: the held-out ShareGPT conversations, category ``sharegpt``; the first
  human message is the (single) turn; a leading system message becomes context.
- ``FILE``: JSONL, one object per line (a JSON array of objects is accepted too), each with
  one of ``"prompt": str``, ``"turns": [str, ...]`` or ``"messages": [{"role", "content"}, ...]``
  (the last message must be the user's; earlier ones are fixed context), plus optional
  ``"category"`` (default ``"default"``), ``"id"`` and ``"raw": true`` (tokenize the prompt as
  plain text, no chat template; single-turn only).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

from beagle.errors import BeagleError, DataError

logger = logging.getLogger(__name__)

BUILTIN_SOURCES = ("mt-bench", "humaneval", "sharegpt-heldout")
DEFAULT_CATEGORY = "default"


@dataclass
class BenchPrompt:
    """id; category (per-category breakdowns); turns: the user messages, each one timed turn;
    context: messages before the first turn; chat: False = raw text prompt (no chat template)."""

    id: str
    category: str
    turns: list[str]
    context: list[dict] = field(default_factory=list)
    chat: bool = True

    def __post_init__(self):
        if not self.turns or not all(isinstance(turn, str) for turn in self.turns):
            raise DataError(f"prompt {self.id!r} needs at least one user turn (a string)")
        if not self.chat and (len(self.turns) > 1 or self.context):
            raise DataError(f"prompt {self.id!r}: raw (non-chat) prompts are single-turn without context")

    def to_dict(self) -> dict:
        return asdict(self)


def prompt_messages(prompt: BenchPrompt, turn: int, answers: list[str]) -> list[dict]:
    """Chat messages for ``turn`` (0-based): context, earlier turns with ``answers``, this turn."""
    if len(answers) < turn:
        raise BeagleError(f"turn {turn + 1} of prompt {prompt.id!r} needs the {turn} earlier answer(s)")
    messages = [dict(message) for message in prompt.context]
    for index in range(turn):
        messages.append({"role": "user", "content": prompt.turns[index]})
        messages.append({"role": "assistant", "content": answers[index]})
    messages.append({"role": "user", "content": prompt.turns[turn]})
    return messages


def prompt_ids(target, prompt: BenchPrompt, turn: int = 0, answers: list[str] | None = None) -> list[int]:
    """Token ids of ``turn`` of ``prompt`` for ``target``.

    Chat prompts use the target's chat template (with the generation prompt). A raw prompt, or a
    target without a chat template, is tokenized as plain text (earlier turns and answers joined
    by blank lines).
    """
    answers = answers or []
    if prompt.chat and getattr(target.tokenizer, "chat_template", None):
        return target.encode_chat(prompt_messages(prompt, turn, answers))
    if prompt.chat:
        logger.warning("target %s has no chat template; prompt %s is tokenized as plain text", target.name, prompt.id)
    parts = [m["content"] for m in prompt.context]
    for index in range(turn):
        parts += [prompt.turns[index], answers[index]]
    parts.append(prompt.turns[turn])
    return target.encode("\n\n".join(parts))


# ---------------------------------------------------------------- sources
def load_prompts(source: str, limit: int | None = None) -> list[BenchPrompt]:
    """Prompts of a built-in benchmark (``mt-bench``, ``humaneval``, ``sharegpt-heldout``) or a file.

    ``limit`` keeps N prompts picked round-robin over the categories (so a short MT-Bench run
    still covers every category), in their original order.
    """
    path = Path(source)
    if source in BUILTIN_SOURCES or source == "sharegpt":
        prompts = _load_builtin(source)
    elif path.is_file():
        prompts = load_prompt_file(path)
    else:
        raise BeagleError(
            f"unknown prompt set {source!r}: use one of {', '.join(BUILTIN_SOURCES)} or a JSONL file "
            'with {"prompt": ...}, {"turns": [...]} or {"messages": [...]} per line'
        )
    if not prompts:
        raise DataError(f"prompt set {source!r} is empty")
    return limit_prompts(prompts, limit)


def limit_prompts(prompts: list[BenchPrompt], limit: int | None) -> list[BenchPrompt]:
    """At most ``limit`` prompts (all when None), ordered round-robin over categories (first-appearance
    order): any prefix of the result, such as the prompts a ``--time-budget`` run gets through, covers the
    categories evenly."""
    if limit is not None and limit < 1:
        raise BeagleError(f"--limit must be ≥ 1, got {limit}")
    limit = len(prompts) if limit is None else min(limit, len(prompts))
    by_category: dict[str, list[int]] = {}
    for index, prompt in enumerate(prompts):
        by_category.setdefault(prompt.category, []).append(index)
    queues = list(by_category.values())
    chosen: list[int] = []
    depth = 0
    while len(chosen) < limit:
        for queue in queues:
            if depth < len(queue) and len(chosen) < limit:
                chosen.append(queue[depth])
        depth += 1
    return [prompts[index] for index in chosen]


def _load_builtin(name: str) -> list[BenchPrompt]:
    try:
        from beagle.assets import datasets
    except ImportError as error:
        raise BeagleError(f"built-in prompt sets need beagle.assets.datasets, which is not available ({error})") from error
    if name == "mt-bench":
        return [
            BenchPrompt(id=str(q["question_id"]), category=str(q.get("category") or DEFAULT_CATEGORY), turns=list(q["turns"]))
            for q in datasets.load_mt_bench()
        ]
    if name == "humaneval":
        return [BenchPrompt(id=str(t["task_id"]), category="humaneval", turns=[t["prompt"]]) for t in datasets.load_humaneval()]
    prompts = []
    for index, record in enumerate(datasets.load_sharegpt(split="heldout")):
        prompt = _sharegpt_prompt(record, index)
        if prompt is not None:
            prompts.append(prompt)
    return prompts


def _sharegpt_prompt(record: dict, index: int) -> BenchPrompt | None:
    context = []
    for turn in record.get("conversations", []):
        speaker = str(turn.get("from", "")).lower()
        value = turn.get("value")
        if not isinstance(value, str) or not value.strip():
            continue
        if speaker == "system" and not context:
            context.append({"role": "system", "content": value})
        elif speaker in ("human", "user"):
            return BenchPrompt(
                id=str(record.get("id", index)),
                category=str(record.get("category") or "sharegpt"),
                turns=[value],
                context=context,
            )
        else:
            break  # the conversation does not start with a human turn
    return None


def load_prompt_file(path) -> list[BenchPrompt]:
    """Read a JSONL (or JSON array) prompt file; see the module docstring for the record formats."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise DataError(f"cannot read prompt file {path}: {error}") from error
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            records = list(enumerate(json.loads(stripped), 1))
        except json.JSONDecodeError as error:
            raise DataError(f"{path} is not valid JSON: {error}") from error
        except RecursionError:
            raise DataError(f"{path} is nested too deeply to parse") from None
    else:
        records = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                records.append((number, json.loads(line)))
            except json.JSONDecodeError as error:
                raise DataError(f"{path}:{number}: not a JSON object ({error.msg})") from error
            except RecursionError:
                raise DataError(f"{path}:{number}: nested too deeply to parse") from None
    return [_file_prompt(record, f"{path}:{number}", index) for index, (number, record) in enumerate(records)]


def _file_prompt(record, where: str, index: int) -> BenchPrompt:
    if not isinstance(record, dict):
        raise DataError(f"{where}: each record must be a JSON object")
    prompt_id = str(record.get("id", record.get("question_id", record.get("task_id", index))))
    category = str(record.get("category") or DEFAULT_CATEGORY)
    raw = bool(record.get("raw", False))
    if "prompt" in record:
        if not isinstance(record["prompt"], str):
            raise DataError(f'{where}: "prompt" must be a string')
        return _checked(where, id=prompt_id, category=category, turns=[record["prompt"]], chat=not raw)
    if "turns" in record:
        turns = record["turns"]
        if not isinstance(turns, list) or not turns or not all(isinstance(t, str) for t in turns):
            raise DataError(f'{where}: "turns" must be a non-empty list of strings')
        return _checked(where, id=prompt_id, category=category, turns=list(turns), chat=not raw)
    if "messages" in record:
        messages = record["messages"]
        if (
            not isinstance(messages, list)
            or not messages
            or not all(isinstance(m, dict) and isinstance(m.get("content"), str) and m.get("role") for m in messages)
        ):
            raise DataError(f'{where}: "messages" must be a non-empty list of {{"role", "content"}} objects')
        if messages[-1]["role"] != "user":
            raise DataError(f"{where}: the last message must be the user's (it is the timed turn)")
        context = [{"role": m["role"], "content": m["content"]} for m in messages[:-1]]
        return _checked(where, id=prompt_id, category=category, turns=[messages[-1]["content"]], context=context,
                        chat=not raw)
    raise DataError(f'{where}: a record needs "prompt", "turns" or "messages"')


def _checked(where: str, **fields) -> BenchPrompt:
    try:
        return BenchPrompt(**fields)
    except DataError as error:
        raise DataError(f"{where}: {error}") from error


def as_prompts(prompts) -> list[BenchPrompt]:
    """Accept BenchPrompts, plain strings (single-turn, category "default") or record dicts."""
    out = []
    for index, prompt in enumerate(prompts):
        if isinstance(prompt, BenchPrompt):
            out.append(prompt)
        elif isinstance(prompt, str):
            out.append(BenchPrompt(id=str(index), category=DEFAULT_CATEGORY, turns=[prompt]))
        elif isinstance(prompt, dict):
            out.append(_file_prompt(prompt, f"prompt {index}", index))
        else:
            raise BeagleError(f"prompt {index}: expected a BenchPrompt, a string or a dict, got {type(prompt).__name__}")
    ids = [p.id for p in out]
    if len(set(ids)) != len(ids):
        raise DataError("prompt ids must be unique within a benchmark run")
    return out
