"""`beagle regenerate`: answers are the target's greedy continuations (checked against the decoding engine),
interrupted runs resume to the same file, malformed records are counted and skipped, ranks shard the work."""

import gzip
import json
import os
import socket
from types import SimpleNamespace

import pytest
import torch
import torch.multiprocessing as mp
from test_training_support import conversations, tiny_chat_target, write_jsonl

from beagle.cli.main import main
from beagle.data import generation_pool as pool
from beagle.data.batches import ChatDataset
from beagle.data.regenerate import RegenerateSettings, regenerate_file
from beagle.decoding.engine import SpeculativeGenerator
from beagle.errors import DataError
from beagle.ranks import Distributed

# initializer_range 0.1: varied greedy text; some answers end with EOS, others at the token limit
SETTINGS = RegenerateSettings(max_new_tokens=10, batch_size=3, refill_every=4)


@pytest.fixture(scope="module")
def target():
    torch.set_num_threads(1)
    return tiny_chat_target(seed=0, initializer_range=0.1)


@pytest.fixture
def data(tmp_path):
    return write_jsonl(tmp_path / "chats.jsonl", conversations(14, seed=2, turns=3))


def read_lines(path):
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def test_every_answer_is_the_targets_greedy_continuation(tmp_path, target, data):
    out = tmp_path / "regenerated.jsonl"
    report = regenerate_file(target, data, out, SETTINGS)
    lines = read_lines(out)
    source = [record["messages"] for record in read_lines(data)]
    engine = SpeculativeGenerator(target)
    eos = target.eos_token_ids()
    endings = set()
    for line in lines:
        messages = line["messages"]
        original = source[line["index"]]
        assert [m["content"] for m in messages if m["role"] == "user"] == \
               [m["content"] for m in original if m["role"] == "user"][: len(messages) // 2]
        for turn, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            prompt = target.encode_chat(messages[:turn])
            tokens = engine.generate(prompt, max_new_tokens=SETTINGS.max_new_tokens).token_ids
            finished = bool(tokens) and tokens[-1] in eos
            tokens = tokens[:-1] if finished else tokens
            assert message["content"] == target.tokenizer.decode(tokens, skip_special_tokens=False), (line["index"], turn)
            endings.add("eos" if finished else "length")
    assert endings == {"eos", "length"}  # both ways an answer stops were exercised
    assert report.written == len(lines) and report.answers == sum(len(line["messages"]) // 2 for line in lines)
    assert report.unfinished_answers < report.answers and report.tokens_this_run == report.new_tokens > 0
    assert not out.with_name(out.name + ".partial").exists()
    # the batch split and padding change nothing: one row at a time gives the same file
    single = tmp_path / "single.jsonl"
    regenerate_file(target, data, single, RegenerateSettings(max_new_tokens=10, batch_size=1, refill_every=10))
    assert single.read_text() == out.read_text()


def test_resume_after_interruption_gives_the_same_file(tmp_path, target, data, monkeypatch):
    reference = tmp_path / "reference.jsonl"
    regenerate_file(target, data, reference, SETTINGS)
    out = tmp_path / "out.jsonl.gz"
    calls = {"count": 0}
    extend = pool.greedy_extend

    def killed_on_the_fifth_call(*args, **kwargs):
        calls["count"] += 1
        if calls["count"] == 5:
            raise KeyboardInterrupt
        return extend(*args, **kwargs)

    monkeypatch.setattr(pool, "greedy_extend", killed_on_the_fifth_call)
    with pytest.raises(KeyboardInterrupt):
        regenerate_file(target, data, out, SETTINGS)
    monkeypatch.setattr(pool, "greedy_extend", extend)
    assert not out.exists()  # no output until complete
    part = out.with_name(out.name + ".partial") / "rank-00000.jsonl"
    done = [json.loads(line) for line in part.read_text().splitlines()]
    assert 0 < len(done) < 14
    with part.open("a") as handle:  # a kill in the middle of a write
        handle.write('{"index": 13, "messages": [{"role": "user", "con')
    report = regenerate_file(target, data, out, SETTINGS)
    assert report.resumed == len(done) and 0 < report.tokens_this_run < report.new_tokens
    assert read_lines(out) == read_lines(reference)
    assert not part.parent.exists()
    again = regenerate_file(target, data, out, SETTINGS)  # complete: nothing to do
    assert again.existed


def test_a_partial_folder_of_other_settings_is_refused(tmp_path, target, data, monkeypatch):
    out = tmp_path / "out.jsonl"
    monkeypatch.setattr(pool, "greedy_extend", lambda *args, **kwargs: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        regenerate_file(target, data, out, SETTINGS)
    with pytest.raises(DataError, match="differs in settings"):
        regenerate_file(target, data, out, RegenerateSettings(max_new_tokens=5))


def test_malformed_records_are_counted_and_skipped(tmp_path, target):
    good = {"messages": [{"role": "user", "content": "w1 w2"}, {"role": "assistant", "content": "w3"}]}
    leading = {"conversations": [{"from": "gpt", "value": "w9"}, {"from": "human", "value": "w4"},
                                 {"from": "gpt", "value": "w5"}]}
    long_prompt = {"messages": [{"role": "user", "content": " ".join(["w7"] * 40)},
                                {"role": "assistant", "content": "w1"}]}
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join([
        json.dumps(good),
        "{not json",
        json.dumps({"messages": [{"role": "user", "content": "w1"}]}),  # a prompt only: answered
        json.dumps({"messages": [{"role": "user", "content": " "}, {"role": "assistant", "content": "w1"}]}),
        json.dumps({"input_ids": [5, 6, 7], "loss_mask": [0, 1, 1]}),  # no text to regenerate
        json.dumps(leading),
        json.dumps(long_prompt),
    ]) + "\n")
    out = tmp_path / "out.jsonl"
    report = regenerate_file(target, path, out, RegenerateSettings(max_new_tokens=4, max_length=30, batch_size=2))
    assert report.source.total == 7
    assert dict(report.source.skipped) == {"invalid_json": 1, "empty_turn": 1}
    assert dict(report.dropped) == {"pretokenized": 1, "max_length": 1}
    lines = read_lines(out)
    assert [line["index"] for line in lines] == [0, 2, 5]
    assert [m["role"] for m in lines[1]["messages"]] == ["user", "assistant"]  # the prompt got its answer
    assert [m["role"] for m in lines[2]["messages"]] == ["user", "assistant"]  # the leading answer is gone
    assert lines[2]["messages"][0]["content"] == "w4"
    assert "2 dropped" in report.summary() and "2 malformed" in report.summary()


def test_limit_turns_and_time_budget(tmp_path, target, data, monkeypatch):
    out = tmp_path / "few.jsonl"
    report = regenerate_file(target, data, out, RegenerateSettings(max_new_tokens=3, max_turns=1, limit=5))
    lines = read_lines(out)
    assert len(lines) == 5 and all(len(line["messages"]) == 2 for line in lines)
    assert report.ended_early["max_turns"] == sum(
        1 for record in read_lines(data)[:5] if len(record["messages"]) > 2)
    nothing = regenerate_file(target, data, tmp_path / "none.jsonl",
                              RegenerateSettings(max_new_tokens=3, time_budget=1e-9))
    assert nothing.not_started == 14 and read_lines(tmp_path / "none.jsonl") == []
    # a deadline mid-run: conversations under way finish, none gets its first answer afterwards
    clock = iter([0.0, 0.0] + [5.0] * 1000)
    finished = []
    conversations_ = [pool.Conversation(index, record["messages"]) for index, record in enumerate(read_lines(data))]
    monkeypatch.setattr(pool, "time", SimpleNamespace(monotonic=lambda: next(clock)))
    left_out = pool.run_pool(target, conversations_, RegenerateSettings(max_new_tokens=3, batch_size=2, refill_every=2),
                              finished.append, deadline=1.0)
    assert 0 < left_out < 14 and len(finished) + left_out == 14
    assert all(conversation.answers > 0 or conversation.ended for conversation in finished)
    assert all(conversation.entry().get("messages") or conversation.ended == "empty_answer" for conversation in finished)
    with pytest.raises(Exception, match="--max-new-tokens must be at least 1"):
        RegenerateSettings(max_new_tokens=0).validate()


def _worker(rank, world_size, port, data, out):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch.distributed.init_process_group(backend="gloo")
    try:
        target = tiny_chat_target(seed=0, initializer_range=0.1)
        regenerate_file(target, data, out, SETTINGS, Distributed(rank, world_size, rank, initialized=True))
    finally:
        torch.distributed.destroy_process_group()


def test_two_gloo_ranks_write_the_one_process_file(tmp_path, target, data):
    single = tmp_path / "single.jsonl"
    regenerate_file(target, data, single, SETTINGS)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = tmp_path / "two.jsonl"
    mp.spawn(_worker, args=(2, port, data, str(out)), nprocs=2, join=True)
    assert out.read_text() == single.read_text()


def test_cli_output_feeds_train_and_datagen(tmp_path, data, capsys):
    from test_training_cli import COMMON
    from test_training_support import tiny_model, tiny_tokenizer

    folder = tmp_path / "target"
    tokenizer = tiny_tokenizer()
    tiny_model(len(tokenizer), seed=0, initializer_range=0.1).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    out = tmp_path / "regenerated.jsonl.gz"
    args = ["regenerate", "--target", str(folder), "--data", data, "--out", str(out), "--max-new-tokens", "6",
            "--batch-size", "4", "--no-progress", "--device", "cpu"]
    assert main([*args, "--report", str(tmp_path / "report.json")]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["written"] == 14 and report["tokens_per_s"] > 0 and report["source"]["total"] == 14
    captured = capsys.readouterr()
    assert "14 conversations written" in captured.err and "tokens/s" in captured.err
    assert "written to" in captured.out
    assert main(args) == 0 and "nothing to do" in capsys.readouterr().err
    dataset = ChatDataset.from_file(out, tokenizer, 256)
    assert len(dataset) == 14
    features = tmp_path / "features"
    assert main(["datagen", "--target", str(folder), "--data", str(out), "--out", str(features), "--no-progress",
                 "--device", "cpu"]) == 0
    assert main(["train", "--target", str(folder), "--features", str(features), "--out", str(tmp_path / "draft"),
                 "--max-steps", "1", "--no-tensorboard", *COMMON]) == 0
    capsys.readouterr()
    assert main(["regenerate", "--target", str(folder), "--data", str(tmp_path / "missing.jsonl"), "--out",
                 str(tmp_path / "x.jsonl"), "--device", "cpu"]) == 2
    assert capsys.readouterr().err == f"error: no data file {tmp_path / 'missing.jsonl'}\n"
    assert not (tmp_path / "x.jsonl").exists()


def test_train_regenerate_uses_the_same_code_and_caches(tmp_path, target, data, monkeypatch):
    from beagle.training.trainer import TrainConfig, Trainer

    monkeypatch.setenv("BEAGLE_CACHE", str(tmp_path / "cache"))
    config = TrainConfig(data=data, out=str(tmp_path / "run"), regenerate=True, regenerate_max_new_tokens=10,
                         regenerate_batch_size=3, max_length=256, batch_size=2, heldout_count=1, progress=False,
                         tensorboard=False)
    first = Trainer(config, target)
    (cached,) = (tmp_path / "cache" / "regenerated").glob("*.jsonl")
    expected = tmp_path / "expected.jsonl"
    regenerate_file(target, data, expected, RegenerateSettings(max_new_tokens=10, max_length=256))
    assert cached.read_text() == expected.read_text()
    monkeypatch.setattr(pool, "greedy_extend", None)  # cached: nothing is generated again
    again = Trainer(config, target)
    assert [e.input_ids.tolist() for e in again.dataset.examples] == \
           [e.input_ids.tolist() for e in first.dataset.examples]
