"""`beagle self-prompts`: the user-turn prefix of a chat template, the filters and deduplication, seeded
reproducible sampling, resuming, mixing, the pipeline into `beagle regenerate` and `beagle train`, CLI errors."""

import json

import pytest
import torch

from beagle.cli.main import main
from beagle.data import self_prompts as sp
from beagle.data.prompt_filters import PromptFilter, PromptSelector, jaccard, normalise, shingles
from beagle.data.regenerate import RegenerateSettings, regenerate_file
from beagle.data.self_prompts import SelfPromptSettings, self_prompts_file, user_turn_prefix
from beagle.errors import DataError
from test_training_support import (LLAMA2_TEMPLATE, conversations, tiny_chat_target, tiny_model, tiny_tokenizer,
                                   write_jsonl)

# a tiny target that ends its (random-word) user turns with <|im_end|> now and then
SETTINGS = SelfPromptSettings(count=6, batch_size=8, max_prompt_tokens=12, temperature=1.0, top_p=1.0, seed=3,
                              max_samples=400)
RULES = PromptFilter(min_chars=2)


@pytest.fixture(scope="module")
def target():
    torch.set_num_threads(1)
    return tiny_chat_target(seed=0, initializer_range=0.1)


def read_lines(path):
    return [json.loads(line) for line in open(path, encoding="utf-8")]


# --------------------------------------------------------------------------- the template


def test_prefix_of_chatml_and_llama2_templates():
    before, after = user_turn_prefix(tiny_tokenizer())
    assert before == "<|im_start|>system\nYou are helpful<|im_end|>\n<|im_start|>user\n" and after == "<|im_end|>\n"
    before, _ = user_turn_prefix(tiny_tokenizer(), system="w1 w2")
    assert before == "<|im_start|>system\nw1 w2<|im_end|>\n<|im_start|>user\n"
    before, after = user_turn_prefix(tiny_tokenizer(LLAMA2_TEMPLATE))
    assert before == "<s>[INST] " and after == " [/INST]"


def test_a_template_that_rewrites_the_user_message_is_refused():
    tokenizer = tiny_tokenizer("{% for m in messages %}{{ m['content'] | lower }}{% endfor %}")
    with pytest.raises(DataError, match="verbatim"):
        user_turn_prefix(tokenizer)


@pytest.mark.slow
def test_prefix_and_stop_token_of_smollm2():
    from beagle.target_model.model import load_target

    target = load_target("smollm2", dtype="float32", device="cpu")
    before, after = user_turn_prefix(target.tokenizer)
    assert before.endswith("<|im_end|>\n<|im_start|>user\n") and before.startswith("<|im_start|>system\n")
    assert after == "<|im_end|>\n"
    assert target.tokenizer.convert_tokens_to_ids("<|im_end|>") in sp.end_of_turn_ids(target, after)
    assert {"<|im_start|>", "<|im_end|>"} <= sp.control_strings(target.tokenizer, after)


# --------------------------------------------------------------------------- filters


def test_filters_drop_by_reason():
    selector = PromptSelector(PromptFilter(min_chars=5, max_chars=40, charset="latin"), {"<|im_end|>", "[/INST]"})
    assert selector.check("   ") == "empty"
    assert selector.check("hi") == "too_short"
    assert selector.check("x" * 41) == "too_long"
    assert selector.check("What is 2+2?<|im_end|>") == "control_token"
    assert selector.check("Объясни квантовую механику") == "charset"
    assert selector.check("Explique la mécanique quantique") is None  # Latin letters with accents pass
    assert selector.check("What is the capital of France?") is None
    assert selector.check("  what is the CAPITAL of france!!  ") == "duplicate"  # normalised text equal
    assert PromptSelector(PromptFilter(charset="ascii")).check("Explique la mécanique quantique") == "charset"


def test_near_duplicates_are_dropped_and_different_texts_kept():
    selector = PromptSelector(PromptFilter())
    base = "Write a short poem about the sea at night and the stars above it"
    assert selector.check(base) is None
    assert selector.check(base + " please") == "near_duplicate"
    assert jaccard(shingles(normalise(base)), shingles(normalise(base + " please"))) >= 0.7
    assert selector.check("Write a Python function that reverses a linked list in place") is None
    assert selector.check("Explain how photosynthesis works to a ten year old child") is None
    exact_only = PromptSelector(PromptFilter(near_duplicate=None))
    assert exact_only.check(base) is None and exact_only.check(base + " please") is None
    assert exact_only.check(base.upper()) == "duplicate"


def test_near_duplicate_search_against_brute_force():
    # never a drop below the threshold (candidates are checked exactly); a pair at Jaccard >= 0.8 shares a
    # MinHash band with probability 1 - (1 - 0.8^4)^16 > 0.9998, so every such text is found here
    import random

    rng = random.Random(0)
    words = [f"word{i}" for i in range(30)]
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(6, 14))) for _ in range(150)]
    texts += [text + " and" for text in texts[:60]]
    selector = PromptSelector(PromptFilter(min_chars=1))
    kept, found = [], 0
    for text in texts:
        grams = shingles(normalise(text))
        closest = max((jaccard(grams, shingles(normalise(k))) for k in kept), default=0.0)
        reason = selector.check(text)
        if closest < 0.7:
            assert reason is None, text
        elif closest >= 0.8:
            assert reason == "near_duplicate", text
            found += 1
        if reason is None:
            kept.append(text)
    assert found > 20


# --------------------------------------------------------------------------- sampling and the file


def test_seeded_reproducible_and_filtered(tmp_path, target):
    first = self_prompts_file(target, tmp_path / "a.jsonl", SETTINGS, RULES)
    self_prompts_file(target, tmp_path / "b.jsonl", SETTINGS, RULES)
    assert (tmp_path / "a.jsonl").read_text() == (tmp_path / "b.jsonl").read_text()
    lines = read_lines(tmp_path / "a.jsonl")
    assert [line["index"] for line in lines] == list(range(6)) and first.kept == 6
    texts = [line["messages"][0]["content"] for line in lines]
    assert all(line["messages"][0]["role"] == "user" and len(line["messages"]) == 1 for line in lines)
    assert all("<|" not in text and text == text.strip() and text for text in texts)
    assert len({normalise(text) for text in texts}) == 6
    assert first.samples % 8 == 0 and first.samples >= first.kept + sum(first.dropped.values())
    assert first.dropped["unfinished"] > 0  # the token limit was exercised
    assert not (tmp_path / "a.jsonl.partial").exists()
    other = self_prompts_file(target, tmp_path / "c.jsonl", SelfPromptSettings(**{**SETTINGS.__dict__, "seed": 4}),
                              RULES)
    assert other.kept == 6 and (tmp_path / "c.jsonl").read_text() != (tmp_path / "a.jsonl").read_text()
    assert self_prompts_file(target, tmp_path / "a.jsonl", SETTINGS).existed


def test_samples_are_the_targets_own_continuations(target):
    # a kept prompt is what the model samples after the prefix with that seed (checked against a plain
    # generate call without the helper)
    before, after = user_turn_prefix(target.tokenizer)
    prefix = target.tokenizer(before, add_special_tokens=False)["input_ids"]
    stop = sp.end_of_turn_ids(target, after)
    samples = sp.sample_user_turns(target, prefix, 4, SETTINGS, 123, stop, 0)
    again = sp.sample_user_turns(target, prefix, 4, SETTINGS, 123, stop, 0)
    assert samples == again and len(samples) == 4
    assert all(len(tokens) <= SETTINGS.max_prompt_tokens and not set(tokens) & stop for tokens, _ in samples)
    assert all(stopped or len(tokens) == SETTINGS.max_prompt_tokens for tokens, stopped in samples)


def test_resume_after_interruption_gives_the_same_file(tmp_path, target, monkeypatch):
    self_prompts_file(target, tmp_path / "reference.jsonl", SETTINGS, RULES)
    out = tmp_path / "out.jsonl"
    calls = {"count": 0}
    sample = sp.sample_user_turns

    def killed_on_the_third_call(*args, **kwargs):
        calls["count"] += 1
        if calls["count"] == 3:
            raise KeyboardInterrupt
        return sample(*args, **kwargs)

    monkeypatch.setattr(sp, "sample_user_turns", killed_on_the_third_call)
    with pytest.raises(KeyboardInterrupt):
        self_prompts_file(target, out, SETTINGS, RULES)
    monkeypatch.setattr(sp, "sample_user_turns", sample)
    assert not out.exists()
    part = tmp_path / "out.jsonl.partial" / sp.SAMPLES
    assert len(part.read_text().splitlines()) == 2
    with part.open("a") as handle:
        handle.write('{"batch": 2, "samples": [[[5, 6')  # cut by a kill
    report = self_prompts_file(target, out, SETTINGS, RULES)
    assert report.resumed_samples == 16 and report.samples_this_run == report.samples - 16
    assert out.read_text() == (tmp_path / "reference.jsonl").read_text()
    calls["count"] = 0
    monkeypatch.setattr(sp, "sample_user_turns", killed_on_the_third_call)
    with pytest.raises(KeyboardInterrupt):
        self_prompts_file(target, tmp_path / "x.jsonl", SETTINGS, RULES)
    with pytest.raises(DataError, match="differs in settings"):  # other sampling settings: the folder is refused
        self_prompts_file(target, tmp_path / "x.jsonl", SelfPromptSettings(**{**SETTINGS.__dict__, "top_p": 0.5}))
    # the count, filters and mix are not part of it: a larger --count continues the same samples
    monkeypatch.setattr(sp, "sample_user_turns", sample)
    more = self_prompts_file(target, tmp_path / "x.jsonl", SelfPromptSettings(**{**SETTINGS.__dict__, "count": 7}),
                             RULES)
    assert more.resumed_samples == 16 and more.kept == 7


def test_too_few_prompts_within_max_samples_are_reported(tmp_path, target):
    settings = SelfPromptSettings(**{**SETTINGS.__dict__, "count": 50, "max_samples": 16})
    report = self_prompts_file(target, tmp_path / "few.jsonl", settings, RULES)
    assert report.samples == 16 and report.kept < 50 and len(read_lines(tmp_path / "few.jsonl")) == report.kept


def test_mix_takes_deduplicated_conversations_of_another_dataset(tmp_path, target):
    records = conversations(10, seed=1)
    records += [records[0], records[1]]  # duplicates are taken once
    data = write_jsonl(tmp_path / "chats.jsonl", records)
    settings = SelfPromptSettings(**{**SETTINGS.__dict__, "count": 8, "mix": [(data, 0.5)]})
    report = self_prompts_file(target, tmp_path / "mixed.jsonl", settings, RULES)
    lines = read_lines(tmp_path / "mixed.jsonl")
    mixed = [line for line in lines if line["source"] == data]
    assert len(lines) == 8 and len(mixed) == 4 and report.mixed == {data: 4} and report.kept == 4
    assert all(line["messages"] in [r["messages"] for r in records] for line in mixed)
    firsts = [normalise(line["messages"][0]["content"]) for line in lines]
    assert len(set(firsts)) == 8


# --------------------------------------------------------------------------- the pipeline and the CLI


def test_pipeline_into_regenerate_and_train(tmp_path, target):
    prompts = tmp_path / "prompts.jsonl"
    self_prompts_file(target, prompts, SETTINGS, RULES)
    answers = tmp_path / "answers.jsonl"
    report = regenerate_file(target, prompts, answers, RegenerateSettings(max_new_tokens=6, batch_size=4))
    lines = read_lines(answers)
    assert report.source.num_skipped == 0 and report.written + sum(report.dropped.values()) == 6
    assert report.written > 0 and all([m["role"] for m in line["messages"]] == ["user", "assistant"]
                                      for line in lines)
    by_index = {line["index"]: line for line in read_lines(prompts)}
    assert all(line["messages"][0] == by_index[line["index"]]["messages"][0] for line in lines)
    from beagle.data.batches import ChatDataset

    dataset = ChatDataset.from_file(answers, target.tokenizer, max_length=64)
    assert len(dataset) == report.written  # every answered prompt trains


def test_cli_pipeline_without_a_dataset(tmp_path, capsys):
    # the documented commands: self-prompts -> regenerate -> train, on a tiny saved target
    folder = tmp_path / "tiny-target"
    tokenizer = tiny_tokenizer()
    tiny_model(len(tokenizer), seed=0, initializer_range=0.1).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    prompts, answers, draft = tmp_path / "p.jsonl", tmp_path / "r.jsonl", tmp_path / "draft"
    common = ["--target", str(folder), "--device", "cpu", "--no-progress"]
    assert main(["self-prompts", *common, "--count", "8", "--out", str(prompts), "--batch-size", "8",
                 "--max-prompt-tokens", "12", "--min-chars", "2", "--top-p", "1", "--max-samples", "400"]) == 0
    captured = capsys.readouterr()
    assert "8 prompts kept (of 8 wanted)" in captured.err and "prompts written to" in captured.out
    assert len(read_lines(prompts)) == 8
    assert main(["self-prompts", *common, "--count", "8", "--out", str(prompts)]) == 0  # exists: nothing to do
    assert "nothing to do" in capsys.readouterr().err
    assert main(["regenerate", *common, "--data", str(prompts), "--out", str(answers), "--max-new-tokens", "8"]) == 0
    assert len(read_lines(answers)) > 4
    assert main(["train", *common, "--data", str(answers), "--out", str(draft), "--max-steps", "2",
                 "--epochs-stage1", "1", "--epochs-stage2", "1", "--batch-size", "2", "--warmup", "1", "--heldout",
                 "1", "--window", "3", "--sim-steps", "2", "--eval-depth", "2", "--no-tensorboard"]) == 0
    assert (draft / "config.json").is_file()


def test_cli_errors_are_one_line(capsys):
    for argv, message in [
        (["--count", "0"], "--count must be at least 1"),
        (["--count", "4", "--temperature", "0"], "--temperature must be positive"),
        (["--count", "4", "--top-p", "1.5"], "--top-p must be in"),
        (["--count", "4", "--mix", "nofraction"], "--mix takes DATA:FRACTION"),
        (["--count", "4", "--mix", "missing.jsonl:0.5"], "no data file missing.jsonl"),
        (["--count", "4", "--mix", "a.jsonl:1.5"], "--mix fractions"),
        (["--count", "4", "--min-chars", "0"], "--min-chars"),
        (["--count", "4", "--near-duplicate", "0"], "--near-duplicate"),
    ]:
        code = main(["self-prompts", "--target", "no-such-model", "--out", "x.jsonl", *argv])
        error = capsys.readouterr().err.strip()
        assert code == 2 and message in error and "\n" not in error, (argv, error)
