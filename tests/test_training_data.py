"""Training data: formats, malformed records, assistant-only loss masks, batching order."""

import json

import pytest
from test_training_support import (
    LLAMA2_TEMPLATE,
    conversations,
    tiny_tokenizer,
    write_jsonl,
)

from beagle.data.batches import ChatDataset, ShuffledBatches, collate
from beagle.data.conversations import (
    ChatEncoder,
    DataReport,
    encode_conversations,
    load_conversations,
)
from beagle.errors import DataError

GOOD_SHAREGPT = {"conversations": [{"from": "human", "value": "w1 w2"}, {"from": "gpt", "value": "w3 w4 w5"}]}
GOOD_OPENAI = {"messages": [{"role": "user", "content": "w1"}, {"role": "assistant", "content": "w2 w3"}]}
MALFORMED = [
    ("not_an_object", ["w1"]),
    ("missing_conversation", {"id": 3}),
    ("bad_conversation", {"conversations": "w1"}),
    ("bad_conversation", {"messages": []}),
    ("bad_turn", {"conversations": [{"from": "human"}, {"from": "gpt", "value": "w1"}]}),
    ("bad_turn", {"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "w1"}]}),
    ("bad_turn", {"conversations": ["w1", "w2"]}),
    ("unknown_role", {"conversations": [{"from": "narrator", "value": "w1"}, {"from": "gpt", "value": "w2"}]}),
    ("empty_turn", {"conversations": [{"from": "human", "value": "w1"}, {"from": "gpt", "value": "  "}]}),
    ("no_assistant_turn", {"messages": [{"role": "user", "content": "w1"}]}),
    ("bad_input_ids", {"input_ids": [1, "x"]}),
]


def assistant_tokens(tokenizer, example):
    ids = example.input_ids.tolist()
    return [tokenizer.convert_ids_to_tokens(i) for i, m in zip(ids, example.loss_mask.tolist()) if m]


@pytest.mark.parametrize("suffix", ["json", "jsonl"])
def test_malformed_records_are_skipped_and_counted(tmp_path, suffix):
    records = [GOOD_SHAREGPT] + [record for _, record in MALFORMED] + [GOOD_OPENAI]
    path = tmp_path / f"data.{suffix}"
    if suffix == "json":
        path.write_text(json.dumps(records))
    else:
        lines = [json.dumps(record) for record in records] + ["{not json", ""]
        path.write_text("\n".join(lines))
    report = DataReport()
    loaded = load_conversations(path, report)
    expected = {}
    for reason, _ in MALFORMED:
        expected[reason] = expected.get(reason, 0) + 1
    if suffix == "jsonl":
        expected["invalid_json"] = 1
    assert dict(report.skipped) == expected
    assert report.total == len(records) + (suffix == "jsonl")
    assert [index for index, _ in loaded] == [0, len(records) - 1]
    # the kept records are untouched (roles normalized only)
    assert loaded[0][1] == [{"role": "user", "content": "w1 w2"}, {"role": "assistant", "content": "w3 w4 w5"}]
    dataset_report = DataReport()
    examples = encode_conversations(loaded, tiny_tokenizer(), 64, dataset_report)
    assert len(examples) == 2 and dataset_report.kept == 2
    assert "skipped" in report.summary()


def test_unreadable_or_empty_data_is_an_error(tmp_path):
    with pytest.raises(DataError):
        load_conversations(tmp_path / "missing.jsonl")
    broken = tmp_path / "broken.json"
    broken.write_text("[{")
    with pytest.raises(DataError):
        load_conversations(broken)
    empty = tmp_path / "empty.jsonl"
    write_jsonl(empty, [{"messages": [{"role": "user", "content": "w1"}]}])
    with pytest.raises(DataError, match="no usable"):
        ChatDataset.from_file(empty, tiny_tokenizer())


def test_truncated_json_list_keeps_complete_records(tmp_path):
    # the public ShareGPT dump is cut mid-record: complete records are used, the tail is counted
    path = tmp_path / "cut.json"
    path.write_text("[" + json.dumps(GOOD_SHAREGPT) + ", " + json.dumps(GOOD_OPENAI) + ', {"conversations": [{"fr')
    report = DataReport()
    assert len(load_conversations(path, report)) == 2
    assert report.skipped == {"truncated_file": 1}
    single = tmp_path / "one.json"
    single.write_text(json.dumps({"data": [GOOD_OPENAI, GOOD_SHAREGPT]}, indent=2))
    assert len(load_conversations(single)) == 2


def test_chatml_assistant_mask_covers_answers_and_end_markers_only():
    tokenizer = tiny_tokenizer()
    encoder = ChatEncoder(tokenizer, 256)
    messages = [
        {"role": "system", "content": "w9"},
        {"role": "user", "content": "w1 w2"},
        {"role": "assistant", "content": "w3 w4"},
        {"role": "user", "content": "w5"},
        {"role": "assistant", "content": "w6 w7 w8"},
    ]
    example, truncated = encoder.encode(messages)
    assert not truncated
    assert assistant_tokens(tokenizer, example) == ["w3", "w4", "<|im_end|>", "w6", "w7", "w8", "<|im_end|>"]
    # the ids are exactly the rendered template
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    assert example.input_ids.tolist() == tokenizer(text, add_special_tokens=False)["input_ids"]


def test_chatml_default_system_prompt_and_assistant_first_turn():
    # The template injects a system prompt before a first non-system turn: prefix rendering of an
    # assistant-first conversation does not line up, so the content search fallback is used.
    tokenizer = tiny_tokenizer()
    example, _ = ChatEncoder(tokenizer, 256).encode([
        {"role": "assistant", "content": "w1 w2"},
        {"role": "user", "content": "w1"},
        {"role": "assistant", "content": "w1 w3"},
    ])
    assert assistant_tokens(tokenizer, example) == ["w1", "w2", "<|im_end|>", "w1", "w3", "<|im_end|>"]


def test_llama2_style_template_mask():
    tokenizer = tiny_tokenizer(LLAMA2_TEMPLATE)
    messages = [
        {"role": "user", "content": "w1 w2"},
        {"role": "assistant", "content": "w3"},
        {"role": "user", "content": "w3"},  # same text as the answer: must not be marked
        {"role": "assistant", "content": "w5 w6"},
    ]
    example, _ = ChatEncoder(tokenizer, 256).encode(messages)
    tokens = tokenizer.convert_ids_to_tokens(example.input_ids.tolist())
    assert tokens == ["<s>", "[INST]", "w1", "w2", "[/INST]", "w3", "</s>", "[INST]", "w3", "[/INST]", "w5", "w6", "</s>"]
    assert example.loss_mask.tolist() == [0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 1, 1, 1]


def test_truncation_and_the_shifted_mask():
    tokenizer = tiny_tokenizer()
    messages = [{"role": "user", "content": "w1 w2"}, {"role": "assistant", "content": "w3 w4"}]
    full, _ = ChatEncoder(tokenizer, 256).encode(messages)
    cut, truncated = ChatEncoder(tokenizer, 14).encode(messages)
    assert truncated and cut.input_ids.shape[0] == 14
    assert cut.input_ids.tolist() == full.input_ids[:14].tolist()
    assert cut.loss_mask.tolist() == [False] * 13 + [True]
    # the answer starts at token 13 (system prompt, user turn, "<|im_start|> assistant"): nothing to learn in 13
    report = DataReport()
    assert encode_conversations([(0, messages)], tokenizer, 13, report) == []
    assert report.skipped == {"no_assistant_tokens_in_window": 1}


def test_dataset_collate_and_deterministic_order(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", conversations(10, seed=3))
    dataset = ChatDataset.from_file(path, tiny_tokenizer(), 64)
    assert len(dataset) == 10 and dataset.report.kept == 10
    batch = collate([dataset[0], dataset[1]], pad_id=0)
    lengths = batch["lengths"].tolist()
    assert batch["input_ids"].shape == (2, max(lengths))
    assert batch["attention_mask"].sum(1).tolist() == lengths
    assert not batch["loss_mask"][~batch["attention_mask"]].any()
    order = ShuffledBatches(range(10), 3, seed=5)
    assert len(order) == 3
    assert order.batches(0) == ShuffledBatches(range(10), 3, seed=5).batches(0)
    assert order.batches(0) != order.batches(1)
    assert [b for _, b in order.iterate(0, 2)] == order.batches(0)[2:]


def test_gzip_compressed_jsonl_is_read(tmp_path):
    import gzip

    path = tmp_path / "d.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write(json.dumps(GOOD_OPENAI) + "\n" + json.dumps(GOOD_SHAREGPT) + "\n")
    dataset = ChatDataset.from_file(path, tiny_tokenizer(), 64)
    assert dataset.report.kept == 2 and len(dataset) == 2
    (tmp_path / "cut.jsonl.gz").write_bytes(path.read_bytes()[:-8])  # a cut download: an error, not data
    with pytest.raises(DataError, match="cannot read"):
        ChatDataset.from_file(tmp_path / "cut.jsonl.gz", tiny_tokenizer(), 64)


def test_named_sharegpt_data_is_the_training_split(tmp_path, monkeypatch):
    """`--data sharegpt` must exclude the held-out conversations `beagle bench` evaluates on."""
    import json

    import beagle.assets.registry as registry
    from beagle.assets import datasets
    from beagle.data.conversations import resolve_data_path

    dump = tmp_path / "sharegpt.jsonl"
    records = [{"id": f"r{i}", "conversations": [{"from": "human", "value": f"q{i}"}, {"from": "gpt", "value": "a"}]}
               for i in range(7)]
    dump.write_text("".join(json.dumps(r) + "\n" for r in records))
    monkeypatch.setattr(registry, "fetch_asset", lambda name, **kwargs: dump)
    monkeypatch.setattr(datasets, "SHAREGPT_HELDOUT", 2)
    monkeypatch.setattr(datasets.load_sharegpt, "__defaults__", (None, "train", 2))
    path = resolve_data_path("sharegpt")
    kept = [json.loads(line)["id"] for line in path.read_text().splitlines()]
    assert kept == ["r0", "r1", "r2", "r3", "r4"]
    held = [r["id"] for r in datasets.load_sharegpt(dump, split="heldout")]
    assert held == ["r5", "r6"] and not set(kept) & set(held)
    assert resolve_data_path("sharegpt") == path  # reused, not rewritten
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_jsonl_records_holding_line_separators_stay_whole(tmp_path):
    """U+2028 / U+2029 are legal unescaped inside JSON strings (json.dumps(ensure_ascii=False) writes them): a
    JSONL record holding one is one record, so record indices agree with the file's lines."""
    records = [{"messages": [{"role": "user", "content": f"q{i}\u2028x"}, {"role": "assistant", "content": "a\u2029"}]}
               for i in range(3)]
    path = tmp_path / "separators.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    assert "\u2028" in path.read_text(encoding="utf-8")
    report = DataReport()
    loaded = load_conversations(path, report)
    assert [index for index, _ in loaded] == [0, 1, 2] and report.total == 3 and not report.skipped
    assert loaded[1][1][0]["content"] == "q1\u2028x"
