"""Data-parallel training: 2 gloo processes on CPU reach the weights of 1 process with the same global batch."""

import os
import socket

import torch
import torch.multiprocessing as mp

from beagle.models.checkpoint import build_draft, load_draft
from beagle.training.trainer import TrainConfig, train
from test_training_support import pretokenized, tiny_target, write_jsonl

VOCAB = 61


def _config(out, data, **overrides):
    settings = dict(data=data, out=out, epochs_stage1=1, epochs_stage2=1, batch_size=4, lr=1e-3, warmup=2,
                    heldout_count=1, eval_depth=2, window=3, sim_steps=2, progress=False, tensorboard=False, seed=3,
                    max_steps=3)
    settings.update(overrides)
    return TrainConfig(**settings)


def _worker(rank, world_size, port, out, data):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    try:
        train(_config(out, data, micro_batch_size=1), target=tiny_target(VOCAB, seed=0))
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_gloo_ranks_match_one_process(tmp_path):
    # 9 sequences: 1 held out, 8 for training -> 2 steps per epoch; 3 steps cross the Beagle stage switch.
    data = write_jsonl(tmp_path / "d.jsonl", pretokenized(9, VOCAB, seed=5, low=10, high=30))
    target = tiny_target(VOCAB, seed=0)
    single = train(_config(str(tmp_path / "single"), data, micro_batch_size=2), target=target)
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path / "ddp"), data), nprocs=2, join=True)
    one = load_draft(single, target).state_dict()
    two = load_draft(tmp_path / "ddp", target).state_dict()
    for name in one:
        torch.testing.assert_close(two[name], one[name], atol=1e-6, rtol=1e-5)
    torch.manual_seed(3)  # the trainer's initialisation: training moved the weights away from it
    start = build_draft(target, "beagle").state_dict()
    assert not torch.allclose(start["cross_attn.q_proj.weight"], one["cross_attn.q_proj.weight"])
