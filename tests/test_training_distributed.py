"""Multi-process training on CPU (gloo): 2 ranks reach the weights of 1 process with the same global batch,
data parallel and with FSDP (draft, target or both sharded), and a run resumes across modes."""

import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from beagle.errors import BeagleError
from beagle.models.checkpoint import build_draft, load_draft
from beagle.training.trainer import TrainConfig, Trainer, train
from test_training_support import pretokenized, tiny_target, write_jsonl

VOCAB = 61


def _config(out, data, **overrides):
    settings = dict(data=data, out=out, epochs_stage1=1, epochs_stage2=1, batch_size=4, lr=1e-3, warmup=2,
                    heldout_count=1, eval_depth=2, window=3, sim_steps=2, progress=False, tensorboard=False, seed=3,
                    max_steps=3)
    settings.update(overrides)
    return TrainConfig(**settings)


def _check_sharding(trainer: Trainer, fsdp: str) -> None:
    """Sharded parameters are DTensors holding half of each tensor on this rank; the rest is whole."""
    from torch.distributed.tensor import DTensor

    draft_sharded = [isinstance(p, DTensor) for p in trainer.draft.parameters()]
    layer_sharded = [isinstance(p, DTensor) for p in trainer.target.decoder.layers.parameters()]
    assert all(draft_sharded) == (fsdp in ("draft", "both")) and any(draft_sharded) == all(draft_sharded)
    assert all(layer_sharded) == (fsdp in ("target", "both")) and any(layer_sharded) == all(layer_sharded)
    assert not isinstance(trainer.target.embed.weight, DTensor)  # the draft reads it directly
    if fsdp in ("draft", "both"):
        weight = trainer.draft.mlp.down_proj.weight
        assert weight.to_local().shape[0] * 2 == weight.shape[0]


def _worker(rank, world_size, port, out, data, overrides):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    try:
        trainer = Trainer(_config(out, data, micro_batch_size=1, **overrides), target=tiny_target(VOCAB, seed=0))
        _check_sharding(trainer, overrides.get("fsdp", "none"))
        trainer.run()
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _two_ranks(out, data, **overrides):
    mp.spawn(_worker, args=(2, _free_port(), str(out), data, overrides), nprocs=2, join=True)
    return out


def _assert_same_weights(folder_a, folder_b, target):
    one, two = load_draft(folder_a, target).state_dict(), load_draft(folder_b, target).state_dict()
    for name in one:
        torch.testing.assert_close(two[name], one[name], atol=1e-6, rtol=1e-5)


def _history(folder):
    return json.loads((folder / "config.json").read_text())["training"]["history"]


@pytest.fixture
def data(tmp_path):
    # 9 sequences: 1 held out, 8 for training -> 2 steps per epoch; 3 steps cross the Beagle stage switch.
    return write_jsonl(tmp_path / "d.jsonl", pretokenized(9, VOCAB, seed=5, low=10, high=30))


def test_two_gloo_ranks_match_one_process(tmp_path, data):
    target = tiny_target(VOCAB, seed=0)
    single = train(_config(str(tmp_path / "single"), data, micro_batch_size=2), target=target)
    _two_ranks(tmp_path / "ddp", data)
    _assert_same_weights(single, tmp_path / "ddp", target)
    torch.manual_seed(3)  # the trainer's initialisation: training moved the weights away from it
    start = build_draft(target, "beagle").state_dict()
    one = load_draft(single, target).state_dict()
    assert not torch.allclose(start["cross_attn.q_proj.weight"], one["cross_attn.q_proj.weight"])


@pytest.mark.parametrize("arch,fsdp,extra", [
    ("beagle", "both", {}),
    ("beagle", "target", {}),
    ("eagle2", "draft", {"ttt_steps": 2}),
])
def test_fsdp_matches_one_process(tmp_path, data, arch, fsdp, extra):
    # Gradients must be summed over ranks (not averaged): a factor of 2 moves the weights by ~1e-4 here.
    target = tiny_target(VOCAB, seed=0)
    single = train(_config(str(tmp_path / "single"), data, micro_batch_size=2, arch=arch, **extra), target=target)
    sharded = _two_ranks(tmp_path / "fsdp", data, arch=arch, fsdp=fsdp, **extra)
    _assert_same_weights(single, sharded, target)
    # the evaluations (epoch end, --max-steps stop) ran on both ranks and match
    assert [entry["epoch"] for entry in _history(sharded)] == [1, 1.5]
    assert [entry["tau"] for entry in _history(sharded)] == pytest.approx([e["tau"] for e in _history(single)], abs=1e-6)


def test_fsdp_from_offline_features(tmp_path, data):
    """--features with a sharded draft and target: the target never runs, the sharded draft trains the same."""
    from beagle.data.batches import ChatDataset
    from beagle.data.features import generate_features

    target = tiny_target(VOCAB, seed=0)
    features = generate_features(target, ChatDataset.from_file(data, None, 2048), tmp_path / "features",
                                 shard_size=4, batch_tokens=64, states_dtype=torch.float32, progress=False)
    single = train(_config(str(tmp_path / "single"), None, features=str(features), micro_batch_size=2), target=target)
    sharded = _two_ranks(tmp_path / "fsdp", None, features=str(features), fsdp="both")
    _assert_same_weights(single, sharded, target)


def test_resume_across_fsdp_and_single_process(tmp_path, data):
    """1 step in one process -> step 2 on 2 FSDP ranks -> step 3 in one process == 3 steps in one process."""
    target = tiny_target(VOCAB, seed=0)
    reference = train(_config(str(tmp_path / "reference"), data, micro_batch_size=2), target=target)
    out = tmp_path / "mixed"
    train(_config(str(out), data, micro_batch_size=2, max_steps=1), target=target)
    _two_ranks(out, data, fsdp="both", max_steps=2, resume=True)
    train(_config(str(out), data, micro_batch_size=2, resume=True), target=target)
    _assert_same_weights(reference, out, target)


def test_fsdp_needs_torchrun(tmp_path, data, monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(BeagleError, match="torchrun"):
        _config(str(tmp_path / "x"), data, fsdp="draft").validate()
    with pytest.raises(BeagleError, match="--fsdp"):
        _config(str(tmp_path / "x"), data, fsdp="layers").validate()
