"""Benchmark harness and ``beagle bench`` on a tiny random Llama target (CPU, fp32)."""

from __future__ import annotations

import json

import pytest
import torch

from beagle.bench.harness import resolve_methods, rotated, run_benchmark
from beagle.data.prompt_sets import BenchPrompt, limit_prompts, load_prompt_file, prompt_ids
from beagle.decoding.sampling import GenerationSettings
from beagle.decoding.tree import TreeSettings
from beagle.errors import BeagleError, DataError

CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL = ["<unk>", "<|im_start|>", "<|im_end|>"]
WORDS = ["user", "assistant", "system"] + [f"w{i}" for i in range(93)]
TREE = TreeSettings(depth=3, top_k=4, total_tokens=10)


def _tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: index for index, token in enumerate(SPECIAL + WORDS)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tokenizer.add_special_tokens(SPECIAL)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token="<|im_end|>", unk_token="<unk>", pad_token="<unk>", chat_template=CHATML
    )


def _model():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128,
        vocab_size=len(SPECIAL) + len(WORDS), max_position_embeddings=512, bos_token_id=1, eos_token_id=2,
        pad_token_id=0,
    )
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def tiny():
    from beagle.models.checkpoint import build_draft
    from beagle.target_model.model import TargetModel

    target = TargetModel(_model(), _tokenizer(), name="tiny-llama")
    torch.manual_seed(1)
    drafts = {"beagle": build_draft(target, "beagle"), "eagle": build_draft(target, "eagle2")}
    return target, drafts


PROMPTS = [
    BenchPrompt(id="a", category="writing", turns=["w1 w2 w3 w1 w2 w3", "w4 w5 w6"]),
    BenchPrompt(id="b", category="coding", turns=["w7 w8 w9 w10 w11"]),
    BenchPrompt(id="c", category="writing", turns=["w12 w13"], context=[{"role": "system", "content": "w14 w15"}]),
]


def test_run_benchmark_all_methods(tiny, tmp_path):
    target, drafts = tiny
    settings = GenerationSettings(max_new_tokens=16, temperature=0.0, seed=0)
    results = run_benchmark(target, drafts, PROMPTS, settings, out_dir=tmp_path, tree=TREE,
                            warmup_tokens=4, progress=False, command="pytest")
    names = ["ar", "hf", "hf-static", "hf-pld", "beagle", "beagle-noconcat", "eagle"]
    assert list(results["summary"]) == names
    plain = {name: results["summary"][name]["tokens_per_s"] for name in ("ar", "hf", "hf-static", "hf-pld")}
    best = max(plain, key=plain.get)
    for metrics in results["summary"].values():  # every speed claim against the run's fastest plain method
        assert metrics["best_plain"] == best
        assert metrics["speedup_vs_best_plain"] == pytest.approx(metrics["tokens_per_s"] / plain[best])
    assert results["summary"]["hf-static"]["exact_match"] == 1.0  # HF's static cache decodes as we do (fp32)
    for name in ("results.json", "results.md", "acceptance_by_depth.png", "speedup_by_category.png",
                 "accept_length_histogram.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["summary"].keys() == results["summary"].keys()
    assert saved["environment"]["torch"] == torch.__version__
    assert saved["command"] == "pytest"
    assert saved["environment"]["cudnn_sdp"] is False
    markdown = (tmp_path / "results.md").read_text()
    assert (f"| method | tokens/s | vs best plain ({best}) | speedup vs AR | speedup vs HF | τ | exact match | "
            "peak mem |") in markdown
    assert all(f"| {name} |" in markdown for name in names)

    # 3 prompts, one of them two turns -> 4 timed turns, interleaved in a rotating order.
    records = results["records"]
    assert [(r["prompt_id"], r["turn"]) for r in records] == [("a", 1), ("a", 2), ("b", 1), ("c", 1)]
    assert [r["order"] for r in records] == [rotated(names, i) for i in range(4)]
    assert len({tuple(r["order"]) for r in records}) == 4
    # Turn 2 sees our AR's greedy turn-1 answer as the assistant message.
    first_answer = records[0]["methods"]["ar"]["text"]
    expected = prompt_ids(target, PROMPTS[0], 1, [first_answer])
    assert records[1]["prompt_tokens"] == len(expected)

    for name, metrics in results["summary"].items():
        assert metrics["exact_match"] == 1.0, (name, [r["methods"][name]["first_mismatch"] for r in records])
        assert metrics["tokens_per_s"] > 0
        assert metrics["speedup_vs_ar"] > 0 and metrics["speedup_vs_hf"] > 0
        assert metrics["peak_memory_bytes"] is None  # CPU
        assert metrics["samples"] == 4
        assert metrics["new_tokens"] == results["summary"]["ar"]["new_tokens"]
    assert results["summary"]["ar"]["tau"] == pytest.approx(1.0)
    assert results["summary"]["ar"]["speedup_vs_ar"] == pytest.approx(1.0)
    assert results["summary"]["hf"]["tau"] is None
    for name in ("beagle", "beagle-noconcat", "eagle"):
        metrics = results["summary"][name]
        assert metrics["tau"] >= 1.0
        rates = metrics["acceptance_by_depth"]
        assert 1 <= len(rates) <= TREE.depth and all(0.0 <= r <= 1.0 for r in rates)
        assert sum(metrics["accept_length_histogram"]) == metrics["rounds"] > 0
        assert metrics["rounds"] == sum(len(r["methods"][name]["accept_lengths"]) for r in records)
    assert set(results["by_category"]) == {"writing", "coding"}
    assert results["by_category"]["writing"]["beagle"]["samples"] == 3
    assert results["by_turn"]["2"]["ar"]["samples"] == 1
    assert all(m["speedup_vs_ar"] > 0 for m in results["by_category"]["coding"].values())


def test_run_benchmark_sampling_and_method_subset(tiny):
    target, drafts = tiny
    settings = GenerationSettings(max_new_tokens=8, temperature=0.8, top_p=0.9, seed=3)
    results = run_benchmark(target, drafts, PROMPTS[:2], settings, methods="hf,hf-pld,beagle", tree=TREE,
                            warmup_tokens=0, progress=False)
    assert list(results["summary"]) == ["hf", "hf-pld", "beagle"]
    assert results["summary"]["beagle"]["exact_match"] is None  # no AR, and sampled anyway
    assert results["summary"]["beagle"]["speedup_vs_ar"] is None
    assert results["summary"]["beagle"]["speedup_vs_hf"] > 0
    assert len(results["records"]) == 3  # turn 2 of prompt "a" uses an untimed greedy AR answer
    assert [r["seed"] for r in results["records"]] == [3, 4, 5]


def test_long_prompts_are_skipped(tiny):
    target, _ = tiny
    long_prompt = BenchPrompt(id="long", category="x", turns=[" ".join(["w1"] * 600)])
    results = run_benchmark(target, {}, [long_prompt, PROMPTS[1]], GenerationSettings(max_new_tokens=4),
                            methods=["ar"], warmup_tokens=0, progress=False)
    assert [s["prompt_id"] for s in results["prompts"]["skipped"]] == ["long"]
    assert len(results["records"]) == 1


def test_time_budget_stops_between_prompts(tiny):
    target, _ = tiny
    settings = GenerationSettings(max_new_tokens=4)
    full = run_benchmark(target, {}, PROMPTS, settings, methods=["ar"], warmup_tokens=0, progress=False)
    assert full["prompts"]["completed"] == 3 and not full["prompts"]["stopped_early"]
    # A budget already spent: no prompt starts.
    cut = run_benchmark(target, {}, PROMPTS, settings, methods=["ar"], warmup_tokens=0, progress=False,
                        time_budget=0.0)
    assert cut["prompts"]["stopped_early"]
    assert cut["prompts"]["completed"] == 0 and cut["records"] == []


def test_configure_attention_turns_cudnn_off_on_cuda_unless_asked():
    from beagle.kernels.attention_backend import configure_attention, cudnn_sdp_backend

    before = torch.backends.cuda.cudnn_sdp_enabled()
    with cudnn_sdp_backend(True):  # restores the setting afterwards
        configure_attention("cpu")  # other devices: untouched
        assert torch.backends.cuda.cudnn_sdp_enabled()
        configure_attention("cuda")  # a flag flip: works without a GPU
        assert not torch.backends.cuda.cudnn_sdp_enabled()
        configure_attention("cuda:0", cudnn_sdp=True)
        assert torch.backends.cuda.cudnn_sdp_enabled()
    assert torch.backends.cuda.cudnn_sdp_enabled() is before


def test_cudnn_sdp_backend_is_restored():
    from beagle.kernels.attention_backend import cudnn_sdp_backend

    before = torch.backends.cuda.cudnn_sdp_enabled()
    with cudnn_sdp_backend(not before):
        assert torch.backends.cuda.cudnn_sdp_enabled() is (not before)
    assert torch.backends.cuda.cudnn_sdp_enabled() is before


def test_resolve_methods(tiny):
    _, drafts = tiny
    assert [m.name for m in resolve_methods(None, drafts)] == ["ar", "hf", "hf-static", "hf-pld", "beagle",
                                                                "beagle-noconcat", "eagle"]
    assert [m.kind for m in resolve_methods("ar-eager,hf-static", drafts)] == ["ar-eager", "hf-static"]
    assert [m.name for m in resolve_methods("ar,drafts", drafts, noconcat=False)] == ["ar", "beagle", "eagle"]
    assert [m.concat for m in resolve_methods(["beagle-noconcat"], drafts)] == [False]
    with pytest.raises(BeagleError):
        resolve_methods(["nope"], drafts)
    with pytest.raises(BeagleError):
        resolve_methods(None, {"ar": drafts["beagle"]})


def test_prompt_file_formats(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text(
        '{"prompt": "w1 w2", "category": "c1"}\n\n'
        '{"turns": ["w3", "w4"], "id": "two"}\n'
        '{"messages": [{"role": "system", "content": "w5"}, {"role": "user", "content": "w6"}], "category": "c2"}\n'
    )
    prompts = load_prompt_file(path)
    assert [p.id for p in prompts] == ["0", "two", "2"]
    assert [p.category for p in prompts] == ["c1", "default", "c2"]
    assert prompts[1].turns == ["w3", "w4"] and prompts[2].context == [{"role": "system", "content": "w5"}]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}\n')
    with pytest.raises(DataError):
        load_prompt_file(bad)
    many = [BenchPrompt(id=str(i), category=c, turns=["x"]) for i, c in enumerate("aaabbbccc")]
    assert [p.id for p in limit_prompts(many, 4)] == ["0", "3", "6", "1"]
    assert [p.id for p in limit_prompts(many, None)] == ["0", "3", "6", "1", "4", "7", "2", "5", "8"]


def test_cli_bench_smoke(tiny, tmp_path, capsys):
    from beagle.cli.main import main

    target, drafts = tiny
    model_dir = tmp_path / "target"
    target.model.save_pretrained(model_dir)
    target.tokenizer.save_pretrained(model_dir)
    draft_dir = tmp_path / "my-beagle"
    drafts["beagle"].save_pretrained(draft_dir)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "w1 w2 w3", "category": "c1"}\n{"turns": ["w4 w5", "w6"], "category": "c2"}\n')
    out = tmp_path / "out"
    code = main([
        "bench", "--target", str(model_dir), "--draft", str(draft_dir), "--prompts", str(prompts),
        "--max-new-tokens", "6", "--depth", "2", "--tree-top-k", "3", "--total-tokens", "6",
        "--warmup-tokens", "2", "--no-progress", "--out", str(out),
    ])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| my-beagle |" in printed and "| my-beagle-noconcat |" in printed and str(out / "results.json") in printed
    results = json.loads((out / "results.json").read_text())
    assert results["drafts"]["my-beagle"]["path"] == str(draft_dir)
    assert results["prompts"]["timed_turns"] == 3
    assert all(m["exact_match"] == 1.0 for m in results["summary"].values())
    assert (out / "results.md").is_file() and (out / "speedup_by_category.png").is_file()
