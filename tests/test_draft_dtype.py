"""The draft's dtype at inference (models.checkpoint.inference_draft_dtype, load_draft(dtype=...),
--draft-dtype): a bf16 draft beside a float32 target on a CPU drafts through bf16 rows and the output stays
the target's."""

import pytest
import torch

from beagle.decoding.engine import SpeculativeGenerator
from beagle.decoding.sampling import GenerationSettings
from beagle.decoding.tree import TreeSettings
from beagle.errors import BeagleError
from beagle.models.checkpoint import build_draft, inference_draft_dtype, load_draft, save_draft
from beagle.kernels.cpu_linear import onednn_bf16_supported, use_kernel
from beagle.vocab.core import DraftVocab
from tests.conftest import make_tiny_target
from tests.drafts import make_bigram, oracle_draft

NATIVE_BF16 = onednn_bf16_supported()


def test_inference_dtype_follows_the_cpu_and_the_kernel():
    target = make_tiny_target("llama")
    with use_kernel("columns"):
        assert inference_draft_dtype(target) == torch.float32
    if NATIVE_BF16:
        with use_kernel("onednn"):
            assert inference_draft_dtype(target) == torch.bfloat16
    target.model.to(torch.bfloat16)
    assert inference_draft_dtype(target) == torch.bfloat16  # a bf16 target: its own dtype


@pytest.mark.parametrize("arch", ["beagle", "eagle2"])
def test_load_draft_dtype_names(arch, tmp_path):
    target = make_tiny_target("llama")
    save_draft(build_draft(target, arch), tmp_path / "d")
    assert load_draft(tmp_path / "d", target, dtype="bfloat16").dtype == torch.bfloat16
    assert load_draft(tmp_path / "d", target, dtype="float32").dtype == torch.float32
    assert load_draft(tmp_path / "d", target, dtype="auto").dtype == inference_draft_dtype(target)
    assert load_draft(tmp_path / "d", target).dtype == torch.float32  # default: the target's
    with pytest.raises(BeagleError, match="unknown draft dtype 'int8'"):
        load_draft(tmp_path / "d", target, dtype="int8")


@pytest.mark.parametrize("arch", ["beagle", "eagle2"])
def test_bf16_draft_beside_fp32_target_keeps_greedy_output_and_drafts_through_bf16_rows(arch):
    target = make_tiny_target("llama", seed=2)
    make_bigram(target)
    plain = SpeculativeGenerator(target)
    draft = oracle_draft(target, arch).to(torch.bfloat16)
    draft.set_vocab(DraftVocab(ids=torch.arange(0, 97, 2), coverage=0.5))  # misses tokens the target picks
    assert draft._vocab_rows()[0].dtype == torch.bfloat16  # narrower of draft (bf16) and head (fp32)
    speculative = SpeculativeGenerator(target, draft, TreeSettings(3, 3, 8), adaptive=False)
    settings = GenerationSettings(max_new_tokens=30, ignore_eos=True)
    for seed in range(3):
        prompt = torch.randint(0, 97, (6,), generator=torch.Generator().manual_seed(seed)).tolist()
        out = speculative.generate(prompt, settings)
        assert out.token_ids == plain.generate(prompt, settings).token_ids
    assert out.stats.tau > 1.0  # the bf16 oracle still drafts tokens the target accepts


def test_fp32_draft_beside_bf16_head_keeps_bf16_rows():
    target = make_tiny_target("llama")
    target.model.to(torch.bfloat16)
    draft = build_draft(target, "beagle").float()
    draft.set_vocab(DraftVocab(ids=torch.arange(10), coverage=0.1))
    assert draft._vocab_rows()[0].dtype == torch.bfloat16
