"""Training: exactness of the stage-2 simulation, objectives, memory, resume, offline features."""

import dataclasses

import pytest
import torch

from beagle.models.checkpoint import build_draft, load_draft
from beagle.data.batches import ChatDataset
from beagle.data.features import FeatureDataset, generate_features
from beagle.models.beagle.masks import inverse_block_mask, window_positions
from beagle.models.beagle.objective import BeagleStage2, simulate_drafting
from beagle.models.eagle2.objective import Eagle2Objective, eagle_unroll
from beagle.models.objective import TrainBatch
from beagle.models.registry import make_objective
from beagle.models.settings import ObjectiveSettings
from beagle.training.evaluation import simulated_acceptance, simulated_tau
from beagle.training.memory import peak_saved_tensor_bytes
from beagle.training.trainer import STATE_NAME, Trainer, TrainConfig, train
from test_training_support import pretokenized, tiny_target, write_jsonl

VOCAB = 97


@pytest.fixture(scope="module")
def target():
    return tiny_target(VOCAB, seed=0)


def sequence_batch(target, lengths, seed=0):
    """A right-padded batch of random token sequences with their target states (all positions trained)."""
    generator = torch.Generator().manual_seed(seed)
    width = max(lengths)
    input_ids = torch.zeros(len(lengths), width, dtype=torch.long)
    for row, length in enumerate(lengths):
        input_ids[row, :length] = torch.randint(0, VOCAB, (length,), generator=generator)
    attention = torch.arange(width)[None] < torch.tensor(lengths)[:, None]
    states = target.decoder(input_ids=input_ids, attention_mask=attention.long()).last_hidden_state.detach()
    return TrainBatch(input_ids, attention, attention.clone(), torch.tensor(lengths), states,
                      torch.arange(len(lengths)) + 11 * seed)


def drafter_states(draft, tokens, states, start, steps, concat=True):
    """What inference drafting computes from block start ``start``: [steps, d] (fewer near the end)."""
    cache = draft.new_cache()
    cache.concat = concat
    outputs = [draft.start_round(cache, tokens[:start], states[:start], 0, int(tokens[start]))[0]]
    for i in range(1, steps):
        if start + i >= tokens.shape[0]:
            break
        outputs.append(draft.expand(cache, tokens[start + i : start + i + 1], torch.tensor([0]))[0])
    return torch.stack(outputs)


# --------------------------------------------------------------------------- exactness


@torch.no_grad()
@pytest.mark.parametrize("skip", [False, True], ids=["paper", "last-state-skip"])
def test_stage2_simulation_equals_inference_drafting(target, skip):
    """THE key property: with noise off, the state the stage-2 simulation computes at window position i
    is the state the inference drafter computes after drafting the same tokens greedily from the block
    start (true states before the start, its own states appended since, concat on). With the last-state
    skip (random, non-zero weights) too: training picks the newest visible state as inference does."""
    torch.manual_seed(1)
    draft = build_draft(target, "beagle", last_state_skip=skip).eval()
    if skip:
        torch.nn.init.normal_(draft.skip.weight, std=0.3)
    batch = sequence_batch(target, [29, 21], seed=1)
    window, offsets = 4, torch.tensor([3, 0])
    simulated = {}
    for out in simulate_drafting(draft, batch.input_ids, batch.states.float(), window, offsets, window):
        for b in range(2):
            for m in range(out.query_positions.shape[1]):
                if out.query_valid[b, m]:
                    simulated[(b, int(out.query_positions[b, m]))] = (out.step, out.hidden[b, m])
    stage1 = draft(batch.input_ids, batch.states, inverse_block_mask(batch.input_ids.shape[1], window, offsets))
    wp = window_positions(batch.input_ids.shape[1], window, offsets)
    checked = 0
    for b, length in enumerate(batch.lengths.tolist()):
        tokens, states = batch.input_ids[b, :length], batch.states[b, :length]
        for start in range(1, length):
            if wp[b, start] != 1:
                continue
            concat = drafter_states(draft, tokens, states, start, window, concat=True)
            no_concat = drafter_states(draft, tokens, states, start, window, concat=False)
            for i in range(concat.shape[0]):
                step, hidden = simulated[(b, start + i)]
                assert step == i + 1  # window position i+1 is simulated at step i+1
                torch.testing.assert_close(hidden, concat[i], atol=1e-5, rtol=0)
                # without concatenation the drafter sees true states only: the stage-1 (inverse block) output
                torch.testing.assert_close(stage1[b, start + i], no_concat[i], atol=1e-5, rtol=0)
                checked += 1
    assert checked > 30


@torch.no_grad()
def test_eagle_unroll_equals_inference_drafting(target):
    torch.manual_seed(2)
    draft = build_draft(target, "eagle2").eval()
    batch = sequence_batch(target, [24], seed=2)
    tokens, states = batch.input_ids[0], batch.states[0]
    steps = 4
    unrolled = list(eagle_unroll(draft, batch.input_ids, batch.states.float(), steps))
    for root in range(1, 24 - steps):
        drafted = drafter_states(draft, tokens, states, root, steps)
        for j in range(steps):  # step j+1 at position root+j = index root+j-1
            torch.testing.assert_close(unrolled[j][0, root + j - 1], drafted[j], atol=1e-5, rtol=0)


# --------------------------------------------------------------------------- objectives


def test_stage2_weights_and_window():
    objective = BeagleStage2(ObjectiveSettings(sim_steps=4))
    assert objective.settings.stage2_window == 4
    assert objective.weights == pytest.approx([4 / 10, 3 / 10, 2 / 10, 1 / 10])
    wide = BeagleStage2(ObjectiveSettings(sim_steps=3, stage2_window=5))
    assert wide.weights == pytest.approx([5 / 12, 4 / 12, 3 / 12])


def loss_curve(target, arch, stage, steps=30, **settings):
    torch.manual_seed(0)
    draft = build_draft(target, arch)
    objective = make_objective(arch, stage, ObjectiveSettings(**settings))
    optimizer = torch.optim.AdamW(draft.parameters(), lr=1e-2)
    batch = sequence_batch(target, [30, 26, 22], seed=5)
    losses = []
    for _ in range(steps):
        output = objective(draft, batch, objective.counts(batch).double(), backward=True)
        if output.loss is not None:
            output.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(output.metrics["loss"])
    return losses


@pytest.mark.parametrize("arch,stage,settings", [
    ("beagle", 1, {}),
    ("beagle", 2, {"sim_steps": 3}),
    ("eagle2", 1, {}),
    ("eagle2", 1, {"ttt_steps": 3}),
])
def test_loss_falls(target, arch, stage, settings):
    losses = loss_curve(target, arch, stage, **settings)
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3, losses


def test_chunked_losses_match(target):
    batch = sequence_batch(target, [30, 21], seed=8)
    grads = []
    for chunk in (None, 7):
        torch.manual_seed(4)
        draft = build_draft(target, "beagle")
        objective = make_objective("beagle", 1, ObjectiveSettings(loss_chunk=chunk))
        output = objective(draft, batch, objective.counts(batch).double())
        output.loss.backward()
        grads.append((float(output.loss.detach()), [p.grad.clone() for p in draft.parameters()]))
    assert grads[0][0] == pytest.approx(grads[1][0], rel=1e-6)
    for plain, chunked in zip(grads[0][1], grads[1][1]):
        torch.testing.assert_close(chunked, plain, atol=1e-6, rtol=1e-5)


def test_stage2_returns_no_loss_but_gradients(target):
    draft = build_draft(target, "beagle")
    objective = BeagleStage2(ObjectiveSettings(sim_steps=2))
    batch = sequence_batch(target, [20], seed=3)
    output = objective(draft, batch, objective.counts(batch).double(), backward=True)
    assert output.loss is None
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in draft.parameters())
    # the loss it reports equals the non-backpropagated value
    draft.zero_grad()
    again = objective(draft, batch, objective.counts(batch).double(), backward=False)
    assert float(again.loss) == pytest.approx(output.metrics["loss"], rel=1e-6)


def test_stage2_memory_is_flat_while_ttt_grows(target):
    """Peak bytes held by autograd graphs: constant in s for the stage-2 simulation (detached buffer,
    per-step backward), growing with the unrolled steps for EAGLE-3-style TTT (graph kept)."""
    batch = sequence_batch(target, [64, 64], seed=4)
    exclude = list(target.model.parameters())

    def peak(arch, objective):
        draft = build_draft(target, arch)

        def run():
            output = objective(draft, batch, objective.counts(batch).double(), backward=True)
            if output.loss is not None:
                output.loss.backward()

        return peak_saved_tensor_bytes(run, exclude=exclude + list(draft.parameters()))

    beagle = [peak("beagle", BeagleStage2(ObjectiveSettings(sim_steps=s, stage2_window=4))) for s in (1, 2, 4)]
    ttt = [peak("eagle2", Eagle2Objective(ObjectiveSettings(ttt_steps=s))) for s in (1, 2, 4)]
    assert beagle[0] > 0 and beagle[0] == beagle[1] == beagle[2], beagle
    assert ttt[0] < ttt[1] < ttt[2] and ttt[2] > 3 * ttt[0], ttt


@torch.no_grad()
def test_simulated_acceptance_first_position_is_next_token_top1(target):
    batch = sequence_batch(target, [25, 18], seed=6)
    target_top = target.logits(batch.states).argmax(-1)
    trained = batch.position_mask.clone()
    trained[:, 0] = False  # position 0 has no context for Beagle
    for arch in ("beagle", "eagle2"):
        torch.manual_seed(3)
        draft = build_draft(target, arch).eval()
        accepted, counted = simulated_acceptance(draft, batch, depth=3)
        if arch == "beagle":  # window 1 = every earlier true state visible
            hidden = draft(batch.input_ids, batch.states, inverse_block_mask(25, 1, torch.zeros(2, dtype=torch.long)))
            hits = (draft.logits(hidden).argmax(-1) == target_top) & trained
            assert counted[0] == trained.sum()
        else:
            hidden = next(eagle_unroll(draft, batch.input_ids, batch.states.float(), 1))
            hits = (draft.logits(hidden).argmax(-1) == target_top[:, 1:]) & batch.position_mask[:, 1:]
            assert counted[0] == batch.position_mask[:, 1:].sum()
        assert accepted[0] == hits.sum()
        assert (counted[1:] <= counted[:-1]).all()
    rates, tau = simulated_tau(torch.tensor([8.0, 3.0, 1.0]), torch.tensor([10.0, 6.0, 2.0]))
    assert rates == pytest.approx([0.8, 0.5, 0.5])
    assert tau == pytest.approx(1 + 0.8 + 0.4 + 0.2)


# --------------------------------------------------------------------------- trainer


def config_for(tmp_path, data, **overrides):
    base = dict(data=data, out=str(tmp_path / "run"), epochs_stage1=1, epochs_stage2=1, batch_size=2,
                micro_batch_size=1, lr=1e-3, warmup=3, heldout_count=2, eval_depth=3, window=3, sim_steps=2,
                progress=False, tensorboard=False, seed=7)
    base.update(overrides)
    return TrainConfig(**base)


def weights(path, target):
    return {k: v.clone() for k, v in load_draft(path, target, dtype=torch.float32).state_dict().items()}


def test_resume_is_exact(tmp_path, target):
    data = write_jsonl(tmp_path / "d.jsonl", pretokenized(10, VOCAB, seed=1, low=12, high=24))
    # 8 training sequences, batch 2 -> 4 steps per epoch; 6 steps cross the stage switch at 4
    full = train(config_for(tmp_path / "a", data, max_steps=6), target=target)
    train(config_for(tmp_path / "b", data, max_steps=3), target=target)  # stops mid-epoch
    state = torch.load(tmp_path / "b" / "run" / STATE_NAME, weights_only=False)
    assert state["progress"]["step"] == 3 and state["progress"]["position"] == 3
    resumed = train(config_for(tmp_path / "b", data, max_steps=6, resume=True), target=target)
    a, b = weights(full, target), weights(resumed, target)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    # both ran the epoch-1 evaluation and one where --max-steps stopped them; the checkpoint records them
    history = load_draft(full, target).config.training["history"]
    assert [(entry["epoch"], entry["stage"], entry.get("partial_epoch")) for entry in history] == \
           [(1, 1, None), (1.5, 2, True)]
    assert len(history[0]["acceptance"]) == 3
    resumed_history = load_draft(resumed, target).config.training["history"]
    assert [entry["epoch"] for entry in resumed_history] == [0.75, 1, 1.5]
    assert resumed_history[-1]["tau"] == history[-1]["tau"]


def test_resume_reads_a_version_1_trainer_state(tmp_path, target):
    """States written before the optimizer was keyed by parameter name (version 1) still resume exactly."""
    data = write_jsonl(tmp_path / "d.jsonl", pretokenized(10, VOCAB, seed=1, low=12, high=24))
    full = train(config_for(tmp_path / "a", data, max_steps=4), target=target)
    trainer = Trainer(config_for(tmp_path / "b", data, max_steps=2), target)
    trainer.run()
    path = tmp_path / "b" / "run" / STATE_NAME
    state = torch.load(path, weights_only=False)
    assert state["version"] == 2 and "cross_attn.q_proj.weight" in state["optimizer"]["state"]
    state.update(version=1, model=trainer.draft.state_dict(), optimizer=trainer.optimizer.state_dict())
    torch.save(state, path)
    resumed = train(config_for(tmp_path / "b", data, max_steps=4, resume=True), target=target)
    a, b = weights(full, target), weights(resumed, target)
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_offline_features_give_the_online_first_step_loss(tmp_path, target):
    data = write_jsonl(tmp_path / "d.jsonl", pretokenized(9, VOCAB, seed=2, low=12, high=30))
    dataset = ChatDataset.from_file(data, None, 2048)
    losses = {}
    for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        features = generate_features(target, dataset, tmp_path / name, shard_size=4, batch_tokens=40,
                                     states_dtype=dtype, progress=False)
        assert len(FeatureDataset(features)) == 9
        losses[name] = first_step(config_for(tmp_path / f"f-{name}", None, features=str(features), noise="none",
                                             batch_size=4, micro_batch_size=2), target)
    losses["online"] = first_step(config_for(tmp_path / "online", data, noise="none", batch_size=4,
                                             micro_batch_size=2), target)
    assert losses["float32"] == pytest.approx(losses["online"], rel=1e-5)
    assert losses["bfloat16"] == pytest.approx(losses["online"], rel=2e-2)


def first_step(config, target):
    trainer = Trainer(config, target)
    return trainer.train_step(trainer.objective(0), trainer.batches.batches(0)[0])["loss"]


def test_datagen_resumes_and_skips_completed_shards(tmp_path, target):
    data = write_jsonl(tmp_path / "d.jsonl", pretokenized(7, VOCAB, seed=3))
    dataset = ChatDataset.from_file(data, None, 2048)
    out = generate_features(target, dataset, tmp_path / "f", shard_size=3, progress=False)
    shards = sorted(out.glob("shard-*.safetensors"))
    assert len(shards) == 3
    stamp = shards[0].stat().st_mtime_ns
    shards[2].unlink()  # an interrupted run
    generate_features(target, dataset, tmp_path / "f", shard_size=3, progress=False)
    assert shards[0].stat().st_mtime_ns == stamp and shards[2].is_file()
    reader = FeatureDataset(out)
    item = reader[4]
    assert torch.equal(item["input_ids"], dataset[4]["input_ids"])
    assert torch.equal(item["loss_mask"], dataset[4]["loss_mask"])
    expected = target.forward(dataset[4]["input_ids"][None])[0].to(torch.bfloat16)
    torch.testing.assert_close(item["states"], expected, atol=1e-2, rtol=1e-2)


def test_stage_schedule_and_eagle_epochs(tmp_path, target):
    data = write_jsonl(tmp_path / "d.jsonl", pretokenized(6, VOCAB, seed=4, low=12, high=20))
    out = train(config_for(tmp_path, data, arch="eagle2", epochs_stage1=1, epochs_stage2=1, ttt_steps=2,
                           heldout_count=2), target=target)
    training = load_draft(out, target).config.training
    assert training["step"] == 4 and training["epochs_done"] == 2 and training["ttt_steps"] == 2
    assert [entry["epoch"] for entry in training["history"]] == [1, 2]
    beagle = config_for(tmp_path, data, epochs_stage1=2, epochs_stage2=3)
    assert [beagle.stage_of(e) for e in range(5)] == [1, 1, 2, 2, 2]
    assert dataclasses.replace(beagle, arch="eagle2").stage_of(4) == 1
