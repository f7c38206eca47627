"""Draft vocabularies (beagle.vocab): building, files, validation, drafting through a subset (lossless), training."""

from __future__ import annotations

import json

import pytest
import torch

from beagle.cli.main import main
from beagle.decoding.engine import SpeculativeGenerator
from beagle.decoding.sampling import GenerationSettings
from beagle.decoding.tree import TreeSettings
from beagle.errors import BeagleError
from beagle.models.checkpoint import build_draft, load_draft, save_draft
from beagle.vocab import VOCAB_FILE_NAME, DraftVocab, build_vocab, load_vocab
from beagle.data.vocab_counts import count_assistant_tokens, load_chat_examples, write_draft_with_vocab
from tests.conftest import FAMILIES, make_tiny_target
from tests.drafts import make_bigram, oracle_draft


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threads only add overhead (and the machine is shared)
    yield
    torch.set_num_threads(threads)


def _greedy(tokens=24):
    return GenerationSettings(max_new_tokens=tokens, ignore_eos=True)


def _write_jsonl(path, records):
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return str(path)


# --------------------------------------------------------------------------- building and coverage


def test_build_vocab_keeps_the_most_frequent_and_eos():
    counts = torch.tensor([0, 5, 9, 1, 5, 0, 7, 2])  # V = 8
    vocab = build_vocab(counts, 3, keep=[5], target="t", data="d")
    # EOS 5 (never counted) is kept; then the two most frequent: 2 (9) and 6 (7)
    assert vocab.ids.tolist() == [2, 5, 6]
    assert vocab.coverage == pytest.approx(16 / 29) and vocab.tokens == 29 and vocab.target_vocab_size == 8
    # ties go to the smaller id: 1 and 4 both have 5
    assert build_vocab(counts, 4).ids.tolist() == [1, 2, 4, 6]
    assert build_vocab(counts, 8).coverage == 1.0
    # more ids than seen tokens: the unseen ones fill up by id
    assert build_vocab(counts, 7).ids.tolist() == [0, 1, 2, 3, 4, 6, 7]
    for size in (0, 9, 2.5):
        with pytest.raises(BeagleError, match="size"):
            build_vocab(counts, size)
    with pytest.raises(BeagleError, match="end-of-sequence"):
        build_vocab(counts, 1, keep=[1, 2])


def test_coverage_on_a_hand_made_corpus(tmp_path):
    # Assistant tokens = token t ≥ 1 with the mask set: sequence 1 -> 7 7 8, sequence 2 -> 7 9 (token 0 never counts)
    data = _write_jsonl(tmp_path / "corpus.jsonl", [
        {"input_ids": [7, 1, 7, 7, 8, 2], "loss_mask": [1, 0, 1, 1, 1, 0]},
        {"input_ids": [3, 7, 9, 4], "loss_mask": [0, 1, 1, 0]},
        {"input_ids": [5], "loss_mask": [1]},  # too short: skipped by the data pipeline
    ])
    examples, report = load_chat_examples(data, None)
    assert report.kept == 2 and report.num_skipped == 1
    counts = count_assistant_tokens(((e.input_ids, e.loss_mask) for e in examples), 10)
    assert counts.tolist() == [0, 0, 0, 0, 0, 0, 0, 3, 1, 1]
    vocab = build_vocab(counts, 2, keep=[2])
    assert vocab.ids.tolist() == [2, 7] and vocab.coverage == pytest.approx(3 / 5)
    assert build_vocab(counts, 2).ids.tolist() == [7, 8] and build_vocab(counts, 2).coverage == pytest.approx(4 / 5)
    assert build_vocab(counts, 3).coverage == 1.0
    with pytest.raises(BeagleError, match="outside the target's vocabulary"):
        count_assistant_tokens([([0, 12], [0, 1])], 10)


def test_cli_vocab_reports_coverage_and_round_trips(tmp_path, capsys):
    from conftest_serving import save_tiny_target

    target_dir = save_tiny_target(tmp_path / "target")
    vocab_size = load_draft_target(target_dir).vocab_size
    records = [{"input_ids": [1, 10, 11, 10, 12, 2], "loss_mask": [0, 0, 1, 1, 1, 1]},
               {"input_ids": [1, 10, 13, 2], "loss_mask": [0, 1, 1, 1]}]
    data = _write_jsonl(tmp_path / "data.jsonl", records)
    out = tmp_path / "vocab.safetensors"
    assert main(["vocab", "--target", target_dir, "--data", data, "--size", "3", "--out", str(out), "--no-progress",
                 "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    # assistant tokens: 11 10 12 2 | 10 13 2 -> 10 ×2, 2 ×2, 11, 12, 13; EOS 2 kept; 3 ids: 2, 10, then 11 (tie, smaller)
    assert report["assistant_tokens"] == 7 and report["size"] == 3
    assert report["coverage"] == pytest.approx(5 / 7)
    vocab = DraftVocab.load(out)
    assert vocab.ids.tolist() == [2, 10, 11] and vocab.coverage == pytest.approx(5 / 7)
    assert vocab.target_vocab_size == vocab_size and vocab.tokens == 7 and "data.jsonl" in vocab.data
    assert main(["vocab", "--target", target_dir, "--data", data, "--size", "3", "--out", str(out),
                 "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "71.43 %" in text and text.strip().splitlines()[-1] == str(out)


def load_draft_target(folder):
    from beagle.target_model.model import load_target

    return load_target(folder, device="cpu")


def test_vocab_file_round_trip(tmp_path):
    vocab = DraftVocab(torch.tensor([9, 3, 5]), target="tiny", target_vocab_size=97, coverage=0.625, tokens=40,
                       data="chat.jsonl")
    assert vocab.ids.tolist() == [3, 5, 9]  # sorted
    path = vocab.save(tmp_path / "v.safetensors")
    again = DraftVocab.load(path)
    assert torch.equal(again.ids, vocab.ids) and again.ids.dtype == torch.int64
    assert (again.target, again.target_vocab_size, again.coverage, again.tokens, again.data) == (
        "tiny", 97, 0.625, 40, "chat.jsonl")
    assert "3 tokens of 97" in again.describe() and "62.50 %" in again.describe()
    # a hand-made file with just the tensor is fine
    from safetensors.torch import save_file

    save_file({"draft_vocab": torch.tensor([4, 1], dtype=torch.int16)}, str(tmp_path / "bare.safetensors"))
    bare = load_vocab(tmp_path / "bare.safetensors", vocab_size=97)
    assert bare.ids.tolist() == [1, 4] and bare.coverage is None and bare.target_vocab_size is None


# --------------------------------------------------------------------------- bad files


def _bad_files(tmp_path):
    from safetensors.torch import save_file

    files = {}
    for name, tensors, match in [
        ("float", {"draft_vocab": torch.tensor([1.0, 2.0])}, "must be integers"),
        ("duplicates", {"draft_vocab": torch.tensor([1, 4, 4])}, "duplicate id 4"),
        ("negative", {"draft_vocab": torch.tensor([-3, 1])}, "negative id -3"),
        ("too-large", {"draft_vocab": torch.tensor([1, 500])}, "id 500 is outside the target's vocabulary"),
        ("2d", {"draft_vocab": torch.tensor([[1, 2]])}, "1-D"),
        ("empty", {"draft_vocab": torch.zeros(0, dtype=torch.int32)}, "is empty"),
        ("no-tensor", {"weights": torch.tensor([1, 2])}, "not a draft vocabulary"),
    ]:
        path = tmp_path / f"{name}.safetensors"
        save_file(tensors, str(path))
        files[name] = (path, match)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x07not a safetensors file at all")
    files["garbage"] = (garbage, "cannot read draft vocabulary")
    other = tmp_path / "other-target.safetensors"
    DraftVocab(torch.tensor([1, 2]), target="big", target_vocab_size=32000).save(other)
    files["other-target"] = (other, "built for a target")
    files["missing"] = (tmp_path / "nothing-here.safetensors", "does not exist")
    return files


def test_bad_vocabularies_are_one_line_errors(tmp_path, capsys):
    from conftest_serving import save_tiny_target, tiny_draft, tiny_target

    target = make_tiny_target("llama", seed=1)  # V = 97
    draft = build_draft(target, "beagle")
    target_dir = save_tiny_target(tmp_path / "target")
    draft_dir = tmp_path / "draft"
    save_draft(tiny_draft(tiny_target()), draft_dir)
    for name, (path, match) in _bad_files(tmp_path).items():
        with pytest.raises(BeagleError, match=match):
            draft.set_vocab(path)
        # the CLI: `error: ...` on one line, exit status 2
        code = main(["vocab", "--target", target_dir, "--vocab", str(path), "--draft", str(draft_dir),
                     "--out", str(tmp_path / "out")])
        last = capsys.readouterr().err.strip().splitlines()[-1]
        assert code == 2, name
        assert last.startswith("error: ") and match in last, (name, last)
    assert draft.vocab is None  # nothing half-attached


def test_checkpoint_with_a_broken_vocabulary_is_rejected(tmp_path, capsys):
    target = make_tiny_target("llama", seed=1)
    draft = build_draft(target, "eagle2").set_vocab(DraftVocab(torch.arange(0, 97, 3)))
    save_draft(draft, tmp_path / "d")
    assert load_draft(tmp_path / "d", target).vocab.size == 33
    (tmp_path / "d" / VOCAB_FILE_NAME).unlink()
    with pytest.raises(BeagleError, match="has no draft_vocab.safetensors"):
        load_draft(tmp_path / "d", target)
    DraftVocab(torch.arange(5)).save(tmp_path / "d" / VOCAB_FILE_NAME)
    with pytest.raises(BeagleError, match="holds 5 ids but config.json says draft_vocab_size 33"):
        load_draft(tmp_path / "d", target)
    assert main(["info", str(tmp_path / "d")]) == 2
    assert capsys.readouterr().err.startswith("error: ")


# --------------------------------------------------------------------------- the draft interface


def test_rows_are_gathered_once_and_map_back():
    target = make_tiny_target("qwen2", seed=3)
    ids = torch.tensor([2, 3, 10, 40, 41, 96])
    for arch in ("beagle", "eagle2"):
        draft = build_draft(target, arch).set_vocab(DraftVocab(ids))
        rows = draft._vocab_head[0]
        hidden = torch.randn(4, 64)
        for shape in ((4, 64), (1, 64), (2, 3, 64)):
            states = torch.randn(shape)
            assert torch.allclose(draft.draft_logits(states), draft.logits(states)[..., ids], atol=1e-5)
        assert draft._vocab_head[0] is rows  # not re-gathered per call
        assert draft.draft_logits(hidden).shape == (4, 6) and draft.logits(hidden).shape == (4, 97)
        assert draft.to_target_ids(torch.tensor([[0, 5], [2, 3]])).tolist() == [[2, 96], [10, 40]]
        assert draft.draft_vocab_size == 6 and draft.config.draft_vocab_size == 6
        assert torch.equal(draft.to_draft_vocab(draft.logits(hidden)), draft.logits(hidden)[:, ids])
        draft.set_vocab(None)
        assert draft.draft_vocab_size == 97 and draft.config.draft_vocab_size is None
        assert torch.equal(draft.to_target_ids(torch.tensor([5])), torch.tensor([5]))
    # attached before binding: gathered at bind_target
    unbound = build_draft(target, "beagle")
    unbound._shared = None
    unbound.set_vocab(DraftVocab(ids))
    assert unbound._vocab_head is None
    unbound.bind_target(target)
    assert unbound._vocab_head[0].shape == (6, 64)


# --------------------------------------------------------------------------- lossless decoding


def _vocab_missing_targets_choices(target, prompts, size, seed=0):
    """A random vocabulary of ``size`` ids that misses some tokens plain decoding picks on ``prompts``."""
    plain = SpeculativeGenerator(target)
    picked = {token for prompt in prompts for token in plain.generate(prompt, _greedy()).token_ids}
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randperm(target.vocab_size, generator=generator)[:size]
    missing = sorted(picked - set(ids.tolist()))
    assert missing, "the vocabulary should miss some of the target's choices"
    return DraftVocab(ids)


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_equality_with_a_draft_vocabulary(family):
    target = make_tiny_target(family, seed=1)
    generator = torch.Generator().manual_seed(5)
    prompts = [torch.randint(0, 97, (int(torch.randint(1, 12, (1,), generator=generator)),),
                             generator=generator).tolist() for _ in range(8)]
    vocab = _vocab_missing_targets_choices(target, prompts, 40)
    plain = SpeculativeGenerator(target)
    trees = [TreeSettings(5, 10, 60), TreeSettings(3, 4, 20), TreeSettings(1, 1, 1), TreeSettings(4, 2, 8)]
    for arch in ("beagle", "eagle2"):
        draft = build_draft(target, arch).set_vocab(vocab)
        for index, prompt in enumerate(prompts):
            tree = trees[index % len(trees)]
            speculative = SpeculativeGenerator(target, draft, tree, concat=index % 2 == 0 or arch == "eagle2", adaptive=False)
            assert speculative.generate(prompt, _greedy()).token_ids == plain.generate(prompt, _greedy()).token_ids


@pytest.mark.parametrize("arch", ["beagle", "eagle2"])
def test_greedy_equality_with_deep_acceptance_through_a_vocabulary(arch):
    """An oracle draft on a bigram target: long accepted paths inside the vocabulary, sure rejections outside."""
    target = make_tiny_target("llama", seed=2)
    make_bigram(target)
    plain = SpeculativeGenerator(target)
    prompts = [torch.randint(0, 97, (5,), generator=torch.Generator().manual_seed(seed)).tolist() for seed in range(4)]
    vocab = _vocab_missing_targets_choices(target, prompts, 60, seed=1)
    draft = oracle_draft(target, arch).set_vocab(vocab)
    full = oracle_draft(target, arch)
    for tree in (TreeSettings(5, 10, 60), TreeSettings(4, 1, 4), TreeSettings(3, 4, 20)):
        taus = []
        for prompt in prompts:
            expected = plain.generate(prompt, _greedy(30)).token_ids
            out = SpeculativeGenerator(target, draft, tree, adaptive=False).generate(prompt, _greedy(30))
            assert out.token_ids == expected
            taus.append(out.stats.tau)
            # tokens outside the vocabulary are never proposed, so those steps are never accepted
            assert SpeculativeGenerator(target, full, tree, adaptive=False).generate(prompt, _greedy(30)).stats.tau >= out.stats.tau
        assert max(taus) > 1.5  # inside the vocabulary the oracle still accepts deep paths


def test_sampling_with_a_draft_vocabulary_matches_the_target_distribution():
    """The chi-squared test of tests/test_sampling_lossless.py with a vocabulary that misses two of six tokens."""
    from tests.test_sampling_lossless import LENGTH, VOCAB, chi_squared_p_value, exact_joint, sample_counts

    target = make_tiny_target("llama", vocab_size=VOCAB, seed=11, num_hidden_layers=1)
    draft = oracle_draft(target, "beagle", noise=0.3, seed=1).set_vocab(DraftVocab(torch.tensor([0, 2, 3, 4])))
    settings = GenerationSettings(max_new_tokens=LENGTH, temperature=1.0, ignore_eos=True)
    generator = SpeculativeGenerator(target, draft, TreeSettings(depth=3, top_k=2, total_tokens=6), adaptive=False)
    counts = sample_counts(generator, settings, samples=8_000)
    joint = exact_joint(target, settings)
    assert counts[1].sum() > 0 and counts[:, 5].sum() > 0  # tokens outside the vocabulary are sampled too
    p_value = chi_squared_p_value(counts, joint)
    assert p_value > 1e-4, f"speculative samples deviate from the target distribution (p = {p_value:.2e})"


# --------------------------------------------------------------------------- training


def test_subset_loss_restricts_renormalises_and_weights_by_mass():
    from beagle.models.losses import position_losses

    target = make_tiny_target("llama", seed=4)
    torch.manual_seed(0)
    hidden, states = torch.randn(6, 64), torch.randn(6, 64)
    draft = build_draft(target, "beagle")
    base_loss, base = position_losses(draft, hidden, states, 1.0, 10.0)
    draft.set_vocab(DraftVocab(torch.arange(97)))  # every id: the same losses
    loss, parts = position_losses(draft, hidden, states, 1.0, 10.0)
    assert torch.allclose(loss, base_loss, atol=1e-5) and torch.equal(parts["top1"], base["top1"])
    ids = torch.tensor([0, 5, 9, 30, 31, 60])
    draft.set_vocab(DraftVocab(ids))
    loss, parts = position_losses(draft, hidden, states, 1.0, 10.0)
    p = draft.logits(states).softmax(-1)
    mass = p[:, ids].sum(-1)
    expected = -(mass[:, None] * (p[:, ids] / mass[:, None]) * draft.logits(hidden)[:, ids].log_softmax(-1)).sum(-1)
    assert torch.allclose(parts["ce"], expected, atol=1e-5)
    assert torch.allclose(parts["vloss"], base["vloss"])  # the regression is unchanged
    top1 = (ids[draft.logits(hidden)[:, ids].argmax(-1)] == draft.logits(states).argmax(-1)).float()
    assert torch.equal(parts["top1"], top1)


@pytest.mark.parametrize("arch", ["beagle", "eagle2"])
def test_train_with_draft_vocab_round_trips(tmp_path, arch, capsys):
    from test_training_cli import COMMON
    from test_training_support import conversations, tiny_model, tiny_tokenizer, write_jsonl

    folder = tmp_path / "target"
    tokenizer = tiny_tokenizer()
    tiny_model(len(tokenizer), seed=0).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    data = write_jsonl(tmp_path / "chat.jsonl", conversations(12, seed=4))
    out = tmp_path / "draft"
    args = ["train", "--target", str(folder), "--data", data, "--arch", arch, "--out", str(out), "--max-steps", "2",
            "--no-tensorboard", "--draft-vocab", "20", *COMMON]
    assert main(args) == 0
    assert "draft vocabulary: 20 tokens" in capsys.readouterr().err
    target = load_draft_target(folder)
    draft = load_draft(out, target)
    assert draft.vocab.size == 20 and draft.config.draft_vocab_size == 20 and 0 < draft.vocab.coverage <= 1
    assert set(target.eos_token_ids()) <= set(draft.vocab.ids.tolist())
    assert main(["info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)["draft_vocab"]
    assert info["size"] == 20 and info["coverage"] == pytest.approx(draft.vocab.coverage)
    # resume: the same vocabulary continues, another one is refused
    assert main([*args[:-len(COMMON)], *COMMON[:], "--resume", "--max-steps", "3"]) == 0
    capsys.readouterr()
    other = tmp_path / "other.safetensors"
    DraftVocab(torch.arange(20)).save(other)
    resumed = [a if a != "20" else str(other) for a in args]
    assert main([*resumed, "--resume", "--max-steps", "4"]) == 2
    error = capsys.readouterr().err
    assert "cannot resume" in error and "draft_vocab" in error  # the changed setting is named
    # a vocabulary file works as --draft-vocab too
    out2 = tmp_path / "draft2"
    assert main([a if a != str(out) else str(out2) for a in resumed]) == 0
    assert load_draft(out2, target).vocab.ids.tolist() == list(range(20))


def test_simulated_acceptance_drafts_through_the_vocabulary():
    from beagle.models.objective import TrainBatch
    from beagle.training.evaluation import simulated_acceptance

    target = make_tiny_target("llama", seed=2)
    make_bigram(target)
    ids = torch.randint(0, 97, (2, 12), generator=torch.Generator().manual_seed(0))
    states = target.forward(ids)
    batch = TrainBatch(ids, torch.ones_like(ids, dtype=torch.bool), torch.ones_like(ids, dtype=torch.bool),
                       torch.tensor([12, 12]), states, torch.tensor([1, 2]))
    for arch in ("beagle", "eagle2"):
        draft = oracle_draft(target, arch)
        full, counted = simulated_acceptance(draft, batch, 3)
        argmax = target.logits(states).argmax(-1)
        keep = torch.unique(argmax[:, :6])
        draft.set_vocab(DraftVocab(torch.tensor([t for t in range(97) if t not in keep.tolist()][:50])))
        none, _ = simulated_acceptance(draft, batch, 3)
        assert full[0] > 0 and none[0] < full[0]


# --------------------------------------------------------------------------- applying to an existing draft


def test_apply_a_vocabulary_to_an_existing_draft(tmp_path, capsys):
    from conftest_serving import save_tiny_target, tiny_draft, tiny_target

    target_dir = save_tiny_target(tmp_path / "target")
    target = load_draft_target(target_dir)
    draft_dir = tmp_path / "draft"
    save_draft(tiny_draft(tiny_target()), draft_dir, dtype=torch.bfloat16)
    vocab_file = DraftVocab(torch.arange(0, target.vocab_size, 2), coverage=0.9).save(tmp_path / "v.safetensors")
    out = tmp_path / "draft-v"
    assert main(["vocab", "--target", target_dir, "--vocab", str(vocab_file), "--draft", str(draft_dir),
                 "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(out)
    assert (out / "model.safetensors").read_bytes() == (draft_dir / "model.safetensors").read_bytes()
    assert not (draft_dir / VOCAB_FILE_NAME).exists()
    loaded = load_draft(out, target)
    assert loaded.vocab.size == (target.vocab_size + 1) // 2 and loaded.config.draft_vocab_coverage == 0.9
    assert load_draft(draft_dir, target).vocab is None  # the source draft keeps working without one
    with pytest.raises(BeagleError, match="draft folder itself"):
        write_draft_with_vocab(draft_dir, loaded.vocab, draft_dir)
    assert main(["info", str(out)]) == 0
    assert "draft vocabulary: " in capsys.readouterr().out
    # speculative output with the applied vocabulary equals plain decoding
    plain = SpeculativeGenerator(target)
    prompt = [5, 9, 14, 3]
    assert SpeculativeGenerator(target, loaded, TreeSettings(3, 4, 10), adaptive=False).generate(prompt, _greedy()).token_ids == \
        plain.generate(prompt, _greedy()).token_ids


def test_shipped_vocabulary_fits_smollm2():
    from beagle.assets.shipped import SHIPPED_VOCABS, resolve_vocab_path
    from beagle.serving.demo import DEMO_VOCAB

    assert DEMO_VOCAB in SHIPPED_VOCABS
    for name in SHIPPED_VOCABS:
        path = resolve_vocab_path(name)
        assert path.stat().st_size < 64 * 1024
        vocab = load_vocab(name, vocab_size=49152)
        assert vocab.target == "smollm2" and vocab.size == int(name.rsplit("-", 1)[1]) and 2 in vocab.ids.tolist()
        assert 0.8 < vocab.coverage < 1.0 and "sharegpt" in vocab.data


def test_demo_uses_a_draft_vocabulary(tmp_path):
    from conftest_serving import tiny_draft, tiny_target

    from beagle.serving.demo import DEMO_TARGET, demo_vocab, run_demo

    target = tiny_target()
    draft = tiny_draft(target)
    assert demo_vocab("none", draft, DEMO_TARGET) is None
    assert demo_vocab("auto", draft, "some/other/target") is None
    assert demo_vocab("auto", draft, DEMO_TARGET).size > 0  # the shipped one (the demo's target is smollm2)
    path = DraftVocab(torch.arange(0, target.vocab_size, 3), coverage=0.5).save(tmp_path / "v.safetensors")
    draft.set_vocab(demo_vocab(str(path), draft, DEMO_TARGET))
    assert demo_vocab("auto", draft, DEMO_TARGET) is draft.vocab  # its own comes first
    results = run_demo(target, draft, ["hello world how are you"], max_new_tokens=16, tree=TreeSettings(3, 2, 6))
    assert results["overall"]["agree"] and results["draft_vocab"] == {"size": draft.vocab.size, "coverage": 0.5}
