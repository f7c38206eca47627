"""A round stays lossless whatever the draft emits: NaN / inf draft scores cannot break the tree, siblings are
distinct (beagle.decoding.tree); the streamed text equals decoding all tokens at once, with bounded decode work
per round (beagle.decoding.detokenize)."""

import pytest
import torch

from beagle.decoding.engine import SpeculativeGenerator
from beagle.decoding.sampling import GenerationSettings
from beagle.decoding.tree import DraftTree, TreeSettings, build_tree, check_tree, clamp_log_probs
from beagle.models.checkpoint import build_draft
from tests.conftest import make_tiny_target
from tests.drafts import make_bigram, oracle_draft


def _greedy(tokens=30):
    return GenerationSettings(max_new_tokens=tokens, ignore_eos=True)


def _poison(draft, value: float, fraction: float, seed: int = 0):
    """Make ``draft.draft_logits`` put ``value`` (NaN, ±inf) into a random ``fraction`` of its entries; whole
    rows when ``fraction`` is 1."""
    clean = draft.draft_logits
    generator = torch.Generator().manual_seed(seed)

    def poisoned(hidden):
        logits = clean(hidden)
        hit = torch.rand(logits.shape, generator=generator) < fraction
        return logits.masked_fill(hit.to(logits.device), value)

    draft.draft_logits = poisoned
    return draft


POISONS = [(float("nan"), 0.02), (float("nan"), 0.3), (float("nan"), 1.0), (float("inf"), 0.02),
           (float("-inf"), 0.5)]


@pytest.mark.parametrize("value,fraction", POISONS, ids=str)
def test_clamped_scores_keep_the_tree_well_formed(value, fraction):
    target = make_tiny_target("llama", seed=2)
    make_bigram(target)
    for arch in ("beagle", "eagle2"):
        draft = _poison(oracle_draft(target, arch, noise=0.05), value, fraction)
        for tree_settings in (TreeSettings(4, 4, 9), TreeSettings(5, 3, 15), TreeSettings(3, 5, 30)):
            cache = draft.new_cache(64)
            prompt = torch.arange(3, 9)
            states = target.forward(prompt[None], target.new_cache())[0]
            with torch.no_grad():
                root_hidden = draft.start_round(cache, prompt, states, 0, 11)
                tree = build_tree(draft, cache, root_hidden, tree_settings)
            cache.reset_tree()
            check_tree(tree)


@pytest.mark.parametrize("fast", [False, True], ids=["eager", "fast"])
@pytest.mark.parametrize("value,fraction", POISONS[:2] + POISONS[3:4], ids=str)
def test_a_draft_emitting_nan_still_gives_the_target_tokens(fast, value, fraction):
    """Eager path and FastState (on a CPU): the output is the target's greedy output. (The tree test above is
the one that fails without the clamp: misattached nodes; here a bigram target hides their wrong positions.)"""
    target = make_tiny_target("llama", seed=2)
    make_bigram(target)
    plain = SpeculativeGenerator(target)
    for arch in ("beagle", "eagle2"):
        draft = _poison(oracle_draft(target, arch, noise=0.05), value, fraction, seed=3)
        speculative = SpeculativeGenerator(target, draft, TreeSettings(5, 3, 8), fast=fast)
        for seed in range(2):
            prompt = torch.randint(0, 97, (6,), generator=torch.Generator().manual_seed(seed)).tolist()
            assert speculative.generate(prompt, _greedy()).token_ids == plain.generate(prompt, _greedy()).token_ids


def test_a_draft_of_nan_weights_gives_the_target_tokens():
    target = make_tiny_target("qwen2", seed=4)
    plain = SpeculativeGenerator(target)
    for arch in ("beagle", "eagle2"):
        draft = build_draft(target, arch)
        with torch.no_grad():
            draft.mlp.down_proj.weight[0, 0] = float("nan")  # every draft state NaN from here on
        for fast in (False, True):
            speculative = SpeculativeGenerator(target, draft, TreeSettings(4, 3, 10), fast=fast)
            prompt = [4, 8, 15, 16, 23, 42]
            assert speculative.generate(prompt, _greedy(20)).token_ids == plain.generate(prompt, _greedy(20)).token_ids


def test_clamp_log_probs():
    values = torch.tensor([float("nan"), float("inf"), float("-inf"), -3.0, 0.5, -1e9])
    clamped = clamp_log_probs(values)
    assert torch.isfinite(clamped).all() and (clamped <= 0).all()
    assert clamped[3] == -3.0 and clamped[1] == 0.0 and clamped[0] == clamped[2] == clamped[5]


def test_check_tree_catches_malformed_trees():
    """The check can fail: duplicate siblings, a deep node under the root, a child scored above its parent."""
    def tree(tokens, parents, depths, scores):
        return DraftTree(torch.tensor(tokens), torch.tensor(parents), torch.tensor(depths),
                         torch.tensor(scores, dtype=torch.float), 3)

    check_tree(tree([5, 6, 7], [-1, -1, 0], [1, 1, 2], [-1.0, -2.0, -3.0]))
    with pytest.raises(AssertionError, match="sibling"):
        check_tree(tree([5, 5, 7], [-1, -1, 0], [1, 1, 2], [-1.0, -2.0, -3.0]))
    with pytest.raises(AssertionError, match="depth"):
        check_tree(tree([5, 6, 7], [-1, -1, -1], [1, 1, 3], [-1.0, -2.0, -3.0]))
    with pytest.raises(AssertionError, match="score"):
        check_tree(tree([5, 6, 7], [-1, -1, 0], [1, 1, 2], [-1.0, -2.0, -0.5]))
    with pytest.raises(AssertionError, match="score"):
        check_tree(tree([5, 6, 7], [-1, -1, 0], [1, 1, 2], [-1.0, float("nan"), -3.0]))


def test_siblings_are_distinct_with_a_draft_vocabulary():
    """Random drafts, with and without a draft vocabulary (the index -> target id map), many trees."""
    from beagle.vocab.core import DraftVocab

    target = make_tiny_target("llama", seed=5)
    for arch in ("beagle", "eagle2"):
        draft = build_draft(target, arch)
        for vocab in (None, DraftVocab(ids=torch.arange(0, 97, 2), coverage=0.5)):
            draft.set_vocab(vocab)
            generator = torch.Generator().manual_seed(1)
            for _ in range(5):
                prompt = torch.randint(0, 97, (7,), generator=generator)
                states = target.forward(prompt[None], target.new_cache())[0]
                cache = draft.new_cache(64)
                with torch.no_grad():
                    root_hidden = draft.start_round(cache, prompt, states, 0, int(prompt[-1]))
                    tree = build_tree(draft, cache, root_hidden, TreeSettings(4, 6, 40))
                cache.reset_tree()
                check_tree(tree)
                if vocab is not None:
                    assert all(int(token) % 2 == 0 for token in tree.tokens)


# ------------------------------------------------------------------ streaming text
def byte_level_tokenizer():
    """A GPT-2-style byte-level BPE tokenizer built in code: the 256 byte symbols, merges that join the UTF-8
    bytes of é, 中, 😀 and " the" into single tokens (and some halves), and one special token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    symbol = bytes_to_unicode()
    vocab = {symbol[byte]: byte for byte in range(256)}
    merges = []
    for word in ("é", "中", "😀", " the", "ü"):
        pieces = [symbol[byte] for byte in word.encode("utf-8")]
        while len(pieces) > 1:  # left-to-right merges: every prefix of the word becomes a token
            merges.append((pieces[0], pieces[1]))
            pieces = [pieces[0] + pieces[1]] + pieces[2:]
            vocab.setdefault(pieces[0], len(vocab))
    model = models.BPE(vocab=vocab, merges=merges)
    tokenizer = Tokenizer(model)
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|end|>")
    wrapped.add_special_tokens({"additional_special_tokens": ["<|sep|>"]})
    return wrapped


class CountingTokenizer:
    """Wraps a tokenizer; records the length of every decode() call."""

    def __init__(self, inner):
        self.inner = inner
        self.decoded_lengths: list[int] = []

    def decode(self, tokens, **kwargs):
        self.decoded_lengths.append(len(tokens))
        return self.inner.decode(tokens, **kwargs)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def _pieces(tokenizer, tokens, chunk_sizes):
    from beagle.decoding.detokenize import IncrementalDetokenizer

    detokenizer = IncrementalDetokenizer(tokenizer)
    pieces, start = [], 0
    for size in chunk_sizes:
        pieces.append(detokenizer.push(tokens[start:start + size]))
        start += size
    pieces.append(detokenizer.push(tokens[start:]))
    pieces.append(detokenizer.flush())
    return pieces


def test_incremental_text_equals_decoding_everything_byte_level():
    tokenizer = byte_level_tokenizer()
    generator = torch.Generator().manual_seed(0)
    texts = ["é中😀 the über", "a 😀😀 the中中é", " the the é"]
    sequences = [tokenizer(text)["input_ids"] for text in texts]
    assert any(len(ids) < len(text.encode()) for ids, text in zip(sequences, texts))  # merged tokens exist
    vocab = len(tokenizer)
    sequences += [torch.randint(0, vocab, (60,), generator=generator).tolist() for _ in range(10)]  # any bytes
    for tokens in sequences:
        for chunk in (1, 2, 3, 5):
            sizes = [chunk] * (len(tokens) // chunk)
            assert "".join(_pieces(tokenizer, tokens, sizes)) == tokenizer.decode(tokens, skip_special_tokens=True)


@pytest.mark.slow
def test_incremental_text_equals_decoding_everything_smollm2():
    from transformers import AutoTokenizer

    from beagle.assets.registry import resolve_target

    tokenizer = AutoTokenizer.from_pretrained(resolve_target("smollm2"))
    text = "Grüße aus Zürich! 日本語のテキスト 😀👍🏽 — naïve café, \"quoted\" it's  two  spaces.\n\tx = 1"
    sequences = [tokenizer(text)["input_ids"], tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], tokenize=False)]
    sequences[1] = tokenizer(sequences[1], add_special_tokens=False)["input_ids"]
    generator = torch.Generator().manual_seed(1)
    sequences += [torch.randint(0, len(tokenizer), (80,), generator=generator).tolist() for _ in range(10)]
    for tokens in sequences:
        for chunk in (1, 3, 7):
            sizes = [chunk] * (len(tokens) // chunk)
            assert "".join(_pieces(tokenizer, tokens, sizes)) == tokenizer.decode(tokens, skip_special_tokens=True)


def _text_target(tokenizer, seed=6):
    target = make_tiny_target("llama", vocab_size=len(tokenizer), seed=seed, max_position_embeddings=1024)
    target.tokenizer = tokenizer
    return target


def test_stream_equals_generate_and_decodes_a_bounded_window():
    """stream() pieces concatenate to generate()'s text; every decode() call of a round reads a window of
    a few tokens, however long the output (decoding everything each round would read all of them)."""
    tokenizer = byte_level_tokenizer()
    target = _text_target(tokenizer)
    counting = CountingTokenizer(tokenizer)
    for draft in (None, build_draft(target, "beagle")):
        generator = SpeculativeGenerator(target, draft, TreeSettings(3, 3, 6))
        settings = GenerationSettings(max_new_tokens=120, ignore_eos=True)
        prompt = tokenizer("é中 the")["input_ids"]
        expected = generator.generate(prompt, settings)
        target.tokenizer = counting
        counting.decoded_lengths.clear()
        pieces = list(generator.stream(prompt, settings))
        target.tokenizer = tokenizer
        assert "".join(pieces) == expected.text == tokenizer.decode(expected.token_ids, skip_special_tokens=True)
        assert len(pieces) > 10
        assert max(counting.decoded_lengths) <= 2 * (8 + 4), max(counting.decoded_lengths)  # held + round


def test_stream_stops_at_a_stop_string_split_across_rounds():
    tokenizer = byte_level_tokenizer()
    target = _text_target(tokenizer)
    generator = SpeculativeGenerator(target)  # one token per round: every stop string spans rounds
    settings = GenerationSettings(max_new_tokens=200, ignore_eos=True)
    prompt = tokenizer("the")["input_ids"]
    full = generator.generate(prompt, settings).text
    stop = full[40:43]
    assert len(stop.encode()) >= 3
    expected = generator.generate(prompt, GenerationSettings(max_new_tokens=200, ignore_eos=True, stop=[stop]))
    assert expected.stats.stop_reason == "stop_string"
    streamed = "".join(generator.stream(prompt, GenerationSettings(max_new_tokens=200, ignore_eos=True,
                                                                    stop=[stop])))
    assert streamed == expected.text == full[: full.find(stop)]
    assert generator.last_stats.stop_reason == "stop_string"
