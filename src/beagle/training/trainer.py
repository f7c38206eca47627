"""The training loop, for any registered draft architecture, online or offline features, data parallel.

One optimizer step::

    global batch (batch_size sequences, deterministic order)  ──split──> ranks ──split──> micro-batches
    counts of loss positions, summed over the global batch (all_reduce)      # so every split gives one mean
    for each micro-batch: target states (online, or read from datagen shards) -> objective -> backward
    all_reduce(sum) of gradients  ->  clip (norm 0.5)  ->  AdamW  ->  LR schedule (warm-up, then --lr-schedule)

The objective of each epoch is the architecture's (:mod:`beagle.models.registry`): ``epochs_stage1`` epochs
of its stage 1 then ``epochs_stage2`` of its stage 2, or all of them of its one stage. Randomness that
touches training is drawn per sequence (:mod:`beagle.training.inputs`). After each epoch (and where
--max-steps stops a run): held-out evaluation (the architecture's simulated acceptance, τ; on a split of
the data or on ``eval_data``) and an atomic checkpoint in ``out`` (:mod:`beagle.training.checkpointing`,
which also guards the folder and resumes).

Data parallel: launched by ``torchrun`` (RANK / WORLD_SIZE set), every rank holds the draft and a
replica of the target and processes its share of each global batch; gradients are summed with one
all_reduce per step (not ``DistributedDataParallel``: an objective may backpropagate once per simulated
step, which a manual all_reduce handles without per-backward syncs). ``fsdp`` shards the draft, the
target or both instead (:mod:`beagle.training.distributed`). Rank 0 writes checkpoints and logs.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from beagle.data.batches import ShuffledBatches
from beagle.data.vocab_counts import vocab_from_dataset
from beagle.errors import BeagleError
from beagle.files import destination_path
from beagle.kernels.attention_backend import configure_attention
from beagle.models.checkpoint import build_draft, load_draft
from beagle.ranks import setup_distributed
from beagle.target_model.model import load_target, resolve_dtype
from beagle.training.checkpointing import (
    STATE_NAME,
    Progress,
    check_resumable,
    check_same_vocab,
    load_trainer_state,
    prepare_output_folder,
    restore_training_state,
    save_checkpoint,
    saved_schedule,
)
from beagle.training.config import TrainConfig
from beagle.training.distributed import (
    device_mesh,
    full_state,
    gradient_scale,
    local_norm,
    shard_draft,
    shard_target,
)
from beagle.training.evaluation import simulated_acceptance, simulated_tau, state_batches, summed_acceptance
from beagle.training.inputs import load_dataset, load_eval_dataset, make_batch, split_heldout, with_states
from beagle.training.schedule import LRSchedule
from beagle.vocab.core import load_vocab

logger = logging.getLogger(__name__)


def initial_draft(config: TrainConfig, target):
    """--init-draft: the draft to continue training from (fine-tuning, e.g. a shipped draft on regenerated data),
    in fp32, with the current target's fingerprint; its vocabulary stays unless --draft-vocab replaces it."""
    draft = load_draft(config.init_draft, target, dtype=torch.float32)
    if draft.config.arch != config.arch:
        raise BeagleError(f"--init-draft {config.init_draft} holds an --arch {draft.config.arch} draft, not {config.arch}; "
                          f"pass --arch {draft.config.arch}")
    draft.config.target = {**target.fingerprint(), "weights": target.weights_fingerprint()}
    if config.last_state_skip and not draft.config.last_state_skip:
        draft.enable_last_state_skip()  # zero weights: the loaded draft's outputs are unchanged
        logger.info("added the last-state skip (zero-initialised) to %s", config.init_draft)
    logger.info("starting from the weights of %s", config.init_draft)
    return draft


# --------------------------------------------------------------------------- the loop


class Trainer:
    """Holds the run's pieces; :func:`train` is the entry point."""

    def __init__(self, config: TrainConfig, target=None):
        self.config = config.validate()
        # A target passed in decides the device (the draft shares its embedding and LM head).
        device = config.device or (str(target.device) if target is not None else None)
        self.dist, self.device = setup_distributed(device, process_group=config.fsdp != "none")
        self.mesh = device_mesh(self.dist, self.device) if config.fsdp != "none" else None
        if config.batch_size % self.dist.world_size:
            raise BeagleError(f"--batch-size {config.batch_size} is not divisible by the {self.dist.world_size} ranks")
        self.out = destination_path(config.out)
        if self.dist.is_main:  # before the (slow) loading: a folder holding another run is refused at once
            prepare_output_folder(self.out, config.resume, config.overwrite)
        self.rank_batch = config.batch_size // self.dist.world_size
        self.micro_batch = min(config.micro_batch_size or self.rank_batch, self.rank_batch)
        if self.device.type == "cuda":
            configure_attention(self.device)  # batches of new lengths would re-plan cuDNN attention each step
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        if target is None:
            if config.target is None:
                raise BeagleError("pass --target")
            # A target to shard is read on the CPU; shard_target moves each layer's shard to the GPU.
            load_on = "cpu" if config.shards_target else str(self.device)
            target = load_target(config.target, dtype=resolve_dtype(config.dtype, self.device), device=load_on)
        self.target = target
        self.dataset = load_dataset(config, target, self.dist)
        self._data_digest: str | None = None
        if config.eval_data is not None:  # a separate held-out set: all of the training data trains
            self.eval_dataset = load_eval_dataset(config, target)
            count = len(self.eval_dataset) if config.heldout_count is None else config.heldout_count
            self.train_indices = list(range(len(self.dataset)))
            self.heldout_indices = list(range(min(count, len(self.eval_dataset))))
        else:
            self.eval_dataset = self.dataset
            self.train_indices, self.heldout_indices = split_heldout(len(self.dataset), config)
        self.prompt_dataset = None
        self._prompt_batches = None  # the prompt dataset's micro-batches with their states, made at the first evaluation
        if config.eval_prompts is not None:  # every rank answers (deterministic): sharded drafts evaluate on all
            from beagle.training.prompt_eval import benchmark_answers

            self.prompt_dataset = benchmark_answers(target, config.eval_prompts, config.eval_prompt_count,
                                                    config.eval_new_tokens, config.regenerate_batch_size,
                                                    config.max_length)
        if config.shards_target:
            shard_target(target, self.mesh, self.device)
        if len(self.train_indices) < config.batch_size:
            raise BeagleError(f"only {len(self.train_indices)} training sequences for a batch of {config.batch_size}")
        self.batches = ShuffledBatches(self.train_indices, config.batch_size, config.seed)
        tokenizer = getattr(target, "tokenizer", None)
        self.pad_id = int(getattr(tokenizer, "pad_token_id", None) or 0)

        torch.manual_seed(config.seed)  # identical initial weights on every rank
        if config.init_draft is not None:
            self.draft = initial_draft(config, target).to(self.device).train()
        else:
            self.draft = build_draft(target, config.arch, config.draft_kv_heads,
                                     config.last_state_skip).to(self.device).train()
        if config.draft_vocab is not None:
            self.draft.set_vocab(self._draft_vocab())
        if config.shards_draft:
            shard_draft(self.draft, self.mesh)  # the same seeded weights on every rank, now 1/N each
        elif self.dist.enabled:
            for parameter in self.draft.parameters():
                torch.distributed.broadcast(parameter.data, src=0)
        self.parameters = [p for p in self.draft.parameters() if p.requires_grad]
        fused = self.device.type == "cuda" and not config.shards_draft
        self.optimizer = torch.optim.AdamW(self.parameters, lr=config.lr, betas=tuple(config.betas),
                                           weight_decay=config.weight_decay, fused=fused or None)
        # Over the planned steps (--max-steps stops earlier on the same curve): a resumed run continues it.
        self.schedule = LRSchedule(config.lr_schedule, config.warmup, config.total_epochs * len(self.batches),
                                   config.min_lr_ratio)
        self.scheduler = self.schedule.scheduler(self.optimizer)
        self.progress = Progress()
        self.settings = config.objective_settings()
        self.writer = None
        self.peak_memory_gib: list[float] = []  # per rank, set by run() on CUDA
        self.loop_seconds = 0.0  # wall time of run()'s training loop
        self._last_log = time.perf_counter()
        self._tokens_since_log = 0

    # ------------------------------------------------------------------ setup
    def num_parameters(self) -> int:
        return self.draft.num_parameters()

    @property
    def data_digest(self) -> str | None:
        """The dataset's content digest (computed once), recorded in the trainer state and checked on resume."""
        if self._data_digest is None and hasattr(self.dataset, "content_digest"):
            self._data_digest = self.dataset.content_digest()
        return self._data_digest

    def target_record(self) -> dict:
        return {**self.target.fingerprint(), "weights": self.target.weights_fingerprint()}

    def _draft_vocab(self):
        """--draft-vocab: "N" builds it from the training split's assistant tokens (the same on every rank:
        counting is deterministic), anything else is a vocabulary file."""
        value = self.config.draft_vocab
        if value.isdigit():
            vocab = vocab_from_dataset(self.dataset, int(value), self.target, self.config.data or self.config.features,
                                       indices=self.train_indices)
            logger.info("draft vocabulary from the training split: %s", vocab.describe())
            return vocab
        return load_vocab(value)

    def maybe_resume(self) -> None:
        """--resume: continue the run saved in ``out`` (its weights, optimizer, schedule, progress and RNG)."""
        path = self.out / STATE_NAME
        if not self.config.resume:
            return
        if not path.is_file():
            logger.warning("--resume: no %s in %s; starting from scratch", STATE_NAME, self.out)
            return
        state = load_trainer_state(path)
        check_resumable(state, self.config, self.out, self.data_digest, self.target_record())
        check_same_vocab(state, self.draft, path)
        schedule = saved_schedule(state, self.schedule)
        if schedule != self.schedule:  # e.g. --epochs-stage2 changed: the saved curve continues
            self.schedule, self.scheduler = schedule, schedule.scheduler(self.optimizer)
        self.progress = restore_training_state(state, self.draft, self.optimizer, self.scheduler,
                                               self.config.shards_draft, path)
        logger.info("resumed from %s at step %d (epoch %d, batch %d)", path, self.progress.step,
                    self.progress.epoch, self.progress.position)

    # ------------------------------------------------------------------ steps
    def objective(self, epoch: int):
        """The architecture's training objective for 0-based ``epoch``."""
        return self.config.architecture.make_objective(self.config.stage_of(epoch), self.settings)

    def train_step(self, objective, global_batch: list[int]) -> dict[str, float]:
        """One optimizer step over a global batch of dataset indices. Returns summed metrics."""
        step = self.progress.step
        share = global_batch[self.dist.rank * self.rank_batch : (self.dist.rank + 1) * self.rank_batch]
        micro = [make_batch(self.dataset, share[i : i + self.micro_batch], step, self.config.seed, self.pad_id)
                 for i in range(0, len(share), self.micro_batch)]
        counts = torch.stack([objective.counts(batch) for batch in micro]).sum(0).to(self.device, torch.float64)
        denominators = self.dist.all_reduce(counts).cpu()
        metrics: dict[str, float] = {}
        tokens = 0
        for batch in micro:
            tokens += int(batch.lengths.sum())
            batch = with_states(batch, self.target, self.device)
            output = objective(self.draft, batch, denominators, backward=True)
            if output.loss is not None:
                output.loss.backward()
            for key, value in output.metrics.items():
                metrics[key] = metrics.get(key, 0.0) + value
        self._sync_gradients()
        grad_norm = local_norm(torch.nn.utils.clip_grad_norm_(self.parameters, self.config.grad_clip))
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        names = sorted(metrics)
        totals = self.dist.all_reduce(torch.tensor([metrics[n] for n in names] + [tokens], dtype=torch.float64,
                                                   device=self.device)).tolist()
        result = dict(zip(names, totals[:-1]))
        result["tokens"] = totals[-1]
        result["grad_norm"] = grad_norm
        result["lr"] = self.scheduler.get_last_lr()[0]
        return result

    def _sync_gradients(self) -> None:
        if self.config.shards_draft:  # FSDP reduce-scattered them in backward
            scale = gradient_scale(self.draft)
            if scale != 1.0:
                for parameter in self.parameters:
                    if parameter.grad is not None:
                        parameter.grad.mul_(scale)
            return
        if not self.dist.enabled:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.parameters]
        flat = torch.cat([g.reshape(-1) for g in grads])
        self.dist.all_reduce(flat)
        offset = 0
        for parameter, grad in zip(self.parameters, grads):
            size = grad.numel()
            parameter.grad = flat[offset : offset + size].view_as(grad).clone()
            offset += size

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self, epoch: int) -> dict:
        """Held-out simulated acceptance by draft position, τ, and the current objective's loss (no noise),
        on the held-out split (or --eval-data)."""
        if not self.heldout_indices and self.prompt_dataset is None:
            return {}
        depth = self.config.eval_depth
        self.draft.eval()
        accepted = torch.zeros(depth, dtype=torch.float64)
        counted = torch.zeros(depth, dtype=torch.float64)
        settings = dataclasses.replace(self.settings, noise="none")
        objective = self.config.architecture.make_objective(self.config.stage_of(epoch), settings)
        loss_sum, loss_weight = 0.0, 0.0
        for start in range(0, len(self.heldout_indices), self.micro_batch):
            indices = self.heldout_indices[start : start + self.micro_batch]
            batch = make_batch(self.eval_dataset, indices, 0, self.config.seed, self.pad_id)
            counts = objective.counts(batch).double()
            batch = with_states(batch, self.target, self.device)
            output = objective(self.draft, batch, counts, backward=False)
            loss_sum += float(output.metrics["loss"]) * float(counts.sum())
            loss_weight += float(counts.sum())
            got, total = simulated_acceptance(self.draft, batch, depth)
            accepted += got
            counted += total
        prompts = self._evaluate_prompts(depth)
        self.draft.train()
        rates, tau = simulated_tau(accepted, counted)
        result = {"epoch": epoch + 1, "step": self.progress.step, "stage": self.config.stage_of(epoch),
                  "loss": loss_sum / max(loss_weight, 1.0), "acceptance": rates, "tau": tau,
                  "counted": counted.tolist()}
        if not self.heldout_indices:
            result.update(loss=None, acceptance=[], tau=None, counted=[])
        return {**result, **prompts}

    def _evaluate_prompts(self, depth: int) -> dict:
        """--eval-prompts: τ_sim (top-1, a chain) and its top-k view on the target's answers to the prompts."""
        if self.prompt_dataset is None:
            return {}
        if self._prompt_batches is None:  # the target is frozen: its states (and argmax) serve every evaluation
            indices = list(range(len(self.prompt_dataset)))
            self._prompt_batches = list(state_batches(self.target, self.prompt_dataset, indices, self.micro_batch,
                                                      self.device, self.pad_id))
        top_k = self.config.eval_top_k
        rates, tau = simulated_tau(*summed_acceptance(self.draft, self._prompt_batches, depth))
        rates_topk, tau_topk = simulated_tau(*summed_acceptance(self.draft, self._prompt_batches, depth, top_k))
        return {"prompts": self.config.eval_prompts, "prompts_acceptance": rates, "prompts_tau": tau,
                "prompts_topk_acceptance": rates_topk, "prompts_tau_topk": tau_topk, "prompts_top_k": top_k}

    def _is_best(self) -> bool:
        """--keep-best: the latest evaluation beats every earlier one of this run (ties keep the earlier)."""
        key = self.config.keep_best  # the name of its entry in each evaluation
        history = self.progress.history
        if key is None or not history or history[-1].get(key) is None:
            return False
        earlier = [entry.get(key) for entry in history[:-1] if entry.get(key) is not None]
        return not earlier or history[-1][key] > max(earlier)

    # ------------------------------------------------------------------ saving
    def save(self) -> None:
        if not (self.dist.is_main or self.config.shards_draft):
            return
        model_state, optimizer_state = full_state(self.draft, self.optimizer)  # collective when sharded
        if not self.dist.is_main:
            return
        save_checkpoint(self.out, self.config, self.draft, model_state, optimizer_state, self.scheduler, self.progress,
                        self.schedule, self.data_digest, self.target_record(), best=self._is_best())

    # ------------------------------------------------------------------ logging
    def _open_writer(self) -> None:
        if not (self.dist.is_main and self.config.tensorboard):
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as error:  # tensorboard not installed
            logger.warning("TensorBoard logging off: %s", error)
            return
        self.writer = SummaryWriter(log_dir=str(self.out / "logs"))

    def _log(self, metrics: dict[str, float], bar) -> None:
        self._tokens_since_log += metrics["tokens"]
        step = self.progress.step
        now = time.perf_counter()
        elapsed = max(now - self._last_log, 1e-9)
        if bar is not None:
            bar.set_postfix(loss=f"{metrics['loss']:.4f}", lr=f"{metrics['lr']:.2e}",
                            tok_s=f"{self._tokens_since_log / elapsed:.0f}", refresh=False)
        if step % self.config.log_every and step != 1:
            return
        speed = self._tokens_since_log / elapsed
        self._last_log, self._tokens_since_log = now, 0
        logger.debug("step %d loss %.4f lr %.2e %.0f tokens/s", step, metrics["loss"], metrics["lr"], speed)
        if self.writer is not None:
            for key, value in metrics.items():
                if key != "tokens":
                    self.writer.add_scalar(f"train/{key}", value, step)
            self.writer.add_scalar("train/tokens_per_s", speed, step)

    def _log_eval(self, result: dict) -> None:
        if not result:
            return
        if result["tau"] is not None:
            rates = ", ".join(f"{rate:.3f}" for rate in result["acceptance"])
            logger.info("epoch %g: held-out loss %.4f, acceptance [%s], simulated tau %.3f", result["epoch"],
                        result["loss"], rates, result["tau"])
        if "prompts" in result:
            rates = ", ".join(f"{rate:.3f}" for rate in result["prompts_acceptance"])
            logger.info("epoch %g: on %s answers: acceptance [%s], simulated tau %.3f (top-%d view %.3f)",
                        result["epoch"], result["prompts"], rates, result["prompts_tau"], result["prompts_top_k"],
                        result["prompts_tau_topk"])
        if self.writer is not None:
            if result["tau"] is not None:
                for number, rate in enumerate(result["acceptance"], start=1):
                    self.writer.add_scalar(f"eval/acc@{number}", rate, result["step"])
                self.writer.add_scalar("eval/tau", result["tau"], result["step"])
                self.writer.add_scalar("eval/loss", result["loss"], result["step"])
            if "prompts" in result:
                for number, rate in enumerate(result["prompts_acceptance"], start=1):
                    self.writer.add_scalar(f"eval_prompts/acc@{number}", rate, result["step"])
                self.writer.add_scalar("eval_prompts/tau", result["prompts_tau"], result["step"])
                self.writer.add_scalar(f"eval_prompts/tau_top{result['prompts_top_k']}", result["prompts_tau_topk"],
                                       result["step"])
            self.writer.flush()

    # ------------------------------------------------------------------ run
    def run(self) -> Path:
        config = self.config
        self.maybe_resume()
        self._open_writer()
        steps_per_epoch = len(self.batches)
        total = config.total_epochs * steps_per_epoch
        if config.max_steps is not None:
            total = min(total, config.max_steps)
        logger.info("%s draft: %d parameters; %d training / %d held-out sequences; %d steps of %d sequences",
                    config.arch, self.num_parameters(), len(self.train_indices), len(self.heldout_indices), total,
                    config.batch_size)
        bar = None
        if config.progress and self.dist.is_main:
            bar = tqdm(total=total, initial=min(self.progress.step, total), desc="train", unit="step",
                       dynamic_ncols=True)
        started, first_step = time.perf_counter(), self.progress.step
        try:
            self._run_epochs(bar, steps_per_epoch)
        finally:
            if bar is not None:
                bar.close()
            if self.writer is not None:
                self.writer.close()
        self.loop_seconds = time.perf_counter() - started
        logger.info("%d steps in %.1f s (evaluation and checkpoints included)", self.progress.step - first_step,
                    self.loop_seconds)
        self.peak_memory_gib = self._peak_memory_gib()
        self.dist.barrier()
        return self.out

    def _peak_memory_gib(self) -> list[float]:
        """Peak allocated CUDA memory of each rank's GPU (empty on CPU); a collective."""
        if self.device.type != "cuda":
            return []
        values = torch.zeros(self.dist.world_size, dtype=torch.float64, device=self.device)
        values[self.dist.rank] = torch.cuda.max_memory_allocated(self.device) / 2**30
        return self.dist.all_reduce(values).tolist()

    def _done(self) -> bool:
        return self.config.max_steps is not None and self.progress.step >= self.config.max_steps

    def _run_epochs(self, bar, steps_per_epoch: int) -> None:
        config, progress = self.config, self.progress
        while progress.epoch < config.total_epochs and not self._done():
            epoch = progress.epoch
            objective = self.objective(epoch)
            for position, global_batch in self.batches.iterate(epoch, progress.position):
                metrics = self.train_step(objective, global_batch)
                progress.step += 1
                progress.position = position + 1
                if bar is not None:
                    bar.update(1)
                self._log(metrics, bar)
                if not math.isfinite(metrics["loss"]):
                    raise BeagleError(f"the loss became {metrics['loss']} at step {progress.step}; lower --lr")
                if self._done() and progress.position < steps_per_epoch:
                    # stopped mid-epoch (--max-steps): evaluate the checkpoint it leaves too
                    self._evaluate_into_history(epoch, fraction=progress.position / steps_per_epoch)
                    self.save()
                    return
            progress.epoch, progress.position = epoch + 1, 0
            self._evaluate_into_history(epoch)
            self.save()
            self.dist.barrier()

    def _evaluate_into_history(self, epoch: int, fraction: float | None = None) -> None:
        """Evaluate after (``fraction`` of) 0-based ``epoch``; rank 0 logs it and records it in the history."""
        # Sharded modules need every rank in each forward: then all ranks evaluate (rank 0 keeps it).
        if not (self.dist.is_main or self.config.fsdp != "none"):
            return
        result = self.evaluate(epoch)
        if result and self.dist.is_main:
            if fraction is not None:
                result["epoch"] = round(epoch + fraction, 3)
                result["partial_epoch"] = True
            self.progress.history.append(result)
            self._log_eval(result)


def train(config: TrainConfig, target=None) -> Path:
    """Train a draft as ``config`` says; returns the output folder (the final draft checkpoint).

    ``target``: an already loaded :class:`~beagle.target_model.model.TargetModel` (otherwise ``config.target``
    is loaded).
    """
    return Trainer(config, target).run()
