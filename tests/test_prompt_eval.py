"""Evaluation on a benchmark's own distribution (--eval-prompts), the top-k view of τ_sim, --keep-best."""

import json

import pytest
import torch

from beagle import GenerationSettings, SpeculativeGenerator
from beagle.data.prompt_sets import load_prompts, prompt_ids
from beagle.cli.main import main
from beagle.errors import BeagleError
from beagle.models.checkpoint import build_draft, load_draft
from beagle.training.evaluation import heldout_acceptance, simulated_acceptance
from beagle.training.prompt_eval import benchmark_answers
from beagle.training.trainer import Trainer, TrainConfig
from test_training import sequence_batch
from test_training_cli import COMMON, data_file, target_dir  # noqa: F401  (fixtures)
from test_training_support import conversations, tiny_chat_target, tiny_target, write_jsonl


@pytest.fixture(scope="module")
def chat_target():
    return tiny_chat_target(seed=1)


@pytest.fixture
def prompt_file(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"w{i} w{i + 1} w{i + 2}"}) + "\n" for i in range(5)))
    return str(path)


@torch.no_grad()
@pytest.mark.parametrize("arch", ["beagle", "eagle2"])
def test_top_k_view_counts_the_target_token_among_the_draft_proposals(arch):
    target = tiny_target(97, seed=0)
    batch = sequence_batch(target, [25, 18], seed=6)
    torch.manual_seed(3)
    draft = build_draft(target, arch).eval()
    one, counted_one = simulated_acceptance(draft, batch, depth=3)
    assert torch.equal(torch.stack(simulated_acceptance(draft, batch, 3, top_k=1)), torch.stack([one, counted_one]))
    two, counted_two = simulated_acceptance(draft, batch, 3, top_k=2)
    every, counted_every = simulated_acceptance(draft, batch, 3, top_k=97)
    assert two[0] >= one[0] and counted_two[0] == counted_one[0]  # the same roots, more hits
    assert two[0] > one[0]  # an untrained draft's second choice is right somewhere
    # the whole vocabulary always holds the target's token: every step counted is accepted
    assert torch.equal(every, counted_every) and counted_every[1] >= counted_two[1]


def test_benchmark_answers_are_the_targets_greedy_answers(chat_target, prompt_file):
    dataset = benchmark_answers(chat_target, prompt_file, count=3, new_tokens=6, batch_size=2)
    assert len(dataset) == 3
    plain = SpeculativeGenerator(chat_target)
    for example, prompt in zip(dataset.examples, load_prompts(prompt_file, limit=3)):
        ids = prompt_ids(chat_target, prompt, 0)
        greedy = plain.generate(ids, GenerationSettings(max_new_tokens=6)).token_ids
        assert example.input_ids[: len(ids)].tolist() == ids and not example.loss_mask[: len(ids)].any()
        answer = example.input_ids[len(ids):][example.loss_mask[len(ids):]].tolist()
        assert answer[: len(greedy)] == greedy  # the chat template may close the turn after it


def test_training_reports_prompt_tau_and_keeps_the_best_draft(tmp_path, chat_target, prompt_file):
    data = write_jsonl(tmp_path / "chat.jsonl", conversations(10, seed=2))
    config = TrainConfig(data=data, out=str(tmp_path / "run"), epochs_stage1=2, epochs_stage2=1, batch_size=2,
                         lr=3e-3, warmup=1, heldout_count=2, eval_depth=3, window=3, sim_steps=2, progress=False,
                         tensorboard=False, eval_prompts=prompt_file, eval_prompt_count=4, eval_new_tokens=8,
                         eval_top_k=3, keep_best="prompts_tau_topk")
    trainer = Trainer(config, chat_target)
    out = trainer.run()
    history = trainer.progress.history
    assert len(history) == 3 and all(entry["prompts"] == prompt_file for entry in history)
    for entry in history:
        assert len(entry["prompts_acceptance"]) == 3 and entry["prompts_top_k"] == 3
        assert entry["prompts_tau_topk"] >= entry["prompts_tau"] >= 1.0 and entry["tau"] is not None
    # the last evaluation's number is the draft's own, recomputed from the saved weights
    final = load_draft(out, chat_target, dtype=torch.float32).eval()
    indices = list(range(len(trainer.prompt_dataset)))
    accepted, counted = heldout_acceptance(final, chat_target, trainer.prompt_dataset, indices, 3, top_k=3)
    assert (accepted / counted.clamp_min(1)).tolist() == pytest.approx(history[-1]["prompts_topk_acceptance"])
    # best/ holds the draft of the first evaluation that reached the maximum
    values = [entry["prompts_tau_topk"] for entry in history]
    best_step = history[values.index(max(values))]["step"]
    best = load_draft(out / "best", chat_target)
    assert best.config.training["step"] == best_step and best.config.training["kept_by"] == "prompts_tau_topk"


def test_keep_best_on_prompts_needs_eval_prompts(tmp_path):
    with pytest.raises(BeagleError, match="--eval-prompts"):
        TrainConfig(data="x.jsonl", out=str(tmp_path), keep_best="prompts_tau").validate()
    with pytest.raises(BeagleError, match="at least 1"):
        TrainConfig(data="x.jsonl", out=str(tmp_path), eval_top_k=0).validate()


def test_train_cli_eval_prompts_without_a_heldout_split(tmp_path, target_dir, data_file, prompt_file, capsys):  # noqa: F811
    out = tmp_path / "draft"
    common = [value for value in COMMON]
    common[common.index("--heldout") + 1] = "0"
    assert main(["train", "--target", str(target_dir), "--data", data_file, "--out", str(out), "--max-steps", "2",
                 "--eval-prompts", prompt_file, "--eval-prompt-count", "2", "--eval-new-tokens", "4",
                 "--keep-best", "prompts_tau", "--no-tensorboard", *common]) == 0
    err = capsys.readouterr().err
    assert f"on {prompt_file} answers: acceptance by position" in err and "held-out acceptance" not in err
    assert "best draft by prompts_tau" in err and (out / "best" / "model.safetensors").is_file()
    # --overwrite removes the kept draft with the rest of the run
    assert main(["train", "--target", str(target_dir), "--data", data_file, "--out", str(out), "--max-steps", "1",
                 "--overwrite", "--no-tensorboard", *COMMON]) == 0
    assert not (out / "best").exists()
