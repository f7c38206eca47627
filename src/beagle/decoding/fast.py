"""The fast path: every speculative round at fixed shapes, its phases captured as CUDA graphs.

One round, four phases, each its own captured unit over the buffers of :class:`FastState`::

    draft   build_tree over a FastDraftCache  -> tree tokens / parents / depths, ancestry [N+1, N+1]
    verify  one compiled target pass over [root, tree]  -> the target's choice at every node
    accept  accept_on_device: the accepted path (padded to P = D+1 rows, with its count), the bonus token;
            the target cache keeps the path (compaction); the length advances
    commit  draft.start_round on the padded accepted true states  -> the next root's draft state
    host    one read per round: the accepted tokens and their count

Nothing inside a phase reads a host value: lengths and positions live in device tensors, commits are
padded, attention runs over whole static buffers behind masks, and the sampling settings sit in device
tensors (:class:`~beagle.decoding.sampling.SamplingTensors`). On a GPU each phase is captured once per sampling
mode (greedy; sampling; sampling through top-k / top-p, which sorts the vocabulary) and replayed for every
temperature / top-k / top-p; with ``compile`` the target pass is
compiled once per token count and the draft, accept and commit phases once each (inductor fuses their
small kernels: norms, RoPE, SwiGLU, top-k, rerank). On a CPU the same code runs eagerly (what the tests
check against the eager engine in fp32).

Without a draft the same state runs one ``step`` phase per token: the fast autoregressive baseline.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

import torch

from beagle.decoding.sampling import GenerationSettings, SamplingTensors
from beagle.decoding.tree import DraftTree, TreeSettings, build_tree
from beagle.decoding.verify import FastVerifier
from beagle.models.draft_cache import FastDraftCache
from beagle.target_model.fast_passes import FastTargetPasses

logger = logging.getLogger(__name__)

# Phases compiled besides the target pass (which FastTargetPasses compiles once per token count).
COMPILED_PHASES = ("draft", "accept", "commit")
# TorchDynamo recompiles a function for each new shape it sees, up to a limit (8 by default) past which it
# silently runs it uncompiled. Target passes of a few token counts at a few capacities (which double), in both
# sampling modes, stay well inside this.
RECOMPILE_LIMIT = 64


def raise_recompile_limit(limit: int = RECOMPILE_LIMIT) -> None:
    """Let TorchDynamo keep up to ``limit`` compiled variants of each function (logged when raised)."""
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    if getattr(config, name) < limit:
        logger.info("torch._dynamo.config.%s: %d -> %d (one compiled pass per token count and capacity)",
                    name, getattr(config, name), limit)
        setattr(config, name, limit)


@dataclass
class RoundOutput:
    """Host view of one round: tokens emitted (accepted path + bonus) and the tree's depth."""

    tokens: list[int]
    tree_depth: int


class FastState:
    """All static buffers of one (target, draft, tree) at one capacity, and the captured phases.

    Shapes: N = tree tokens, P = rows of a padded accepted path (max depth + 1), d = target width.
    """

    def __init__(self, target, draft, tree: TreeSettings | None, capacity: int, concat: bool, graphs: bool,
                 compile: bool, verifier: FastVerifier, compile_backend: str = "inductor"):
        self.target = target
        self.draft = draft
        self.tree = tree
        self.graphs = graphs
        self.verifier = verifier
        self.passes = FastTargetPasses.for_target(target, capacity, compile=compile, compile_backend=compile_backend)
        self.capacity = self.passes.capacity
        device = self.device = target.device
        self.length = torch.zeros(1, dtype=torch.long, device=device)  # tokens in the target cache = root position
        self.root_token = torch.zeros(1, dtype=torch.long, device=device)
        self.uniforms = torch.zeros(1, device=device)  # sampling: one uniform per row of a pass
        self.sampling = SamplingTensors(device)
        self._captured: dict[tuple, dict[str, torch.cuda.CUDAGraph]] = {}
        self.capture_seconds = 0.0
        self._phase_functions = {name: getattr(self, f"{name}_phase") for name in ("step", *COMPILED_PHASES, "verify")}
        if compile and draft is not None:
            raise_recompile_limit()
            for name in COMPILED_PHASES:
                self._phase_functions[name] = torch.compile(self._phase_functions[name], dynamic=False,
                                                            backend=compile_backend, fullgraph=True)
        if draft is None:
            self.out = torch.zeros(1, dtype=torch.long, device=device)
            return
        depth = tree.depth
        self.nodes = min(tree.total_tokens, tree.max_nodes())
        self.rows = min(depth, self.nodes) + 1  # P
        tree_slots = depth * tree.top_k + 1  # ≥ both drafts' tree entries: 1 + k(D-2) (Beagle), k(D-1) (EAGLE-2)
        self.draft_cache = FastDraftCache(draft.config.num_key_value_heads, draft.config.head_dim, draft.device,
                                            draft.dtype, self.capacity, tree_slots, state_size=target.hidden_size)
        self.draft_cache.concat = concat
        hidden_size = target.hidden_size
        self.root_hidden = torch.zeros(1, hidden_size, dtype=draft.dtype, device=device)
        self.tree_tokens = torch.zeros(self.nodes, dtype=torch.long, device=device)
        self.tree_parents = torch.full((self.nodes,), -1, dtype=torch.long, device=device)
        self.tree_depths = torch.ones(self.nodes, dtype=torch.long, device=device)
        self.ancestry = torch.eye(self.nodes + 1, dtype=torch.bool, device=device)
        self.verify_hidden = torch.zeros(self.nodes + 1, hidden_size, dtype=target.dtype, device=device)
        self.verify_logits: torch.Tensor | None = None
        self.choices = torch.zeros(self.nodes + 1, dtype=torch.long, device=device)
        self.start = torch.zeros(1, dtype=torch.long, device=device)
        self.count = torch.ones(1, dtype=torch.long, device=device)
        self.accepted_tokens = torch.zeros(self.rows, dtype=torch.long, device=device)
        self.accepted_states = torch.zeros(self.rows, hidden_size, dtype=target.dtype, device=device)
        self.out = torch.zeros(self.rows + 2, dtype=torch.long, device=device)  # path tokens, bonus, count, depth
        self.uniforms = torch.zeros(self.nodes + 1, device=device)

    # ---------------------------------------------------------------- start
    def prefill(self, prompt: torch.Tensor, settings: GenerationSettings, generator) -> int:
        """prompt: [L] long. Eager: fills the caches, returns the first new token (one host read)."""
        hidden, logits = self.passes.prefill(prompt)
        uniforms = None if settings.greedy else torch.rand(1, generator=generator, device=self.device)
        token = self.verifier.choose(logits, settings, uniforms, self.sampling.load(settings))
        self.length.fill_(prompt.shape[0])
        self.root_token.copy_(token)
        if self.draft is not None:
            self.draft_cache.clear()
            with torch.no_grad():
                root_hidden = self.draft.start_round(self.draft_cache, prompt, hidden, self.length.new_zeros(1),
                                                     self.root_token)
            self.draft_cache.reset_tree()
            self.root_hidden.copy_(root_hidden)
        return int(token[0])

    # ---------------------------------------------------------------- phases
    def step_phase(self, settings: GenerationSettings) -> None:
        """AR: the root token through the target at slot ``length``; its choice becomes the root."""
        visible = self.passes.step_visibility(self.length)
        _, logits = self.passes.run(self.root_token, self.length, self.length, visible)
        token = self.verifier.choose(logits, settings, self.uniforms[:1], self.sampling)
        self.root_token.copy_(token)
        self.out.copy_(token)
        self.length += 1

    def draft_phase(self, settings: GenerationSettings) -> None:
        """The draft tree from the root's state (fixed depth, fixed node counts)."""
        cache = self.draft_cache
        cache.begin_tree(self.length, self.root_hidden)
        with torch.no_grad():
            tree = build_tree(self.draft, cache, self.root_hidden, self.tree, self.tree.depth)
        cache.reset_tree()
        self.tree_tokens.copy_(tree.tokens)
        self.tree_parents.copy_(tree.parents)
        self.tree_depths.copy_(tree.depths)
        self.ancestry.copy_(tree.ancestry())

    def verify_phase(self, settings: GenerationSettings) -> None:
        """One target pass over [root, tree] at slots length.., positions length + depth; the target's choices."""
        inputs = torch.cat([self.root_token, self.tree_tokens])
        zero = self.length.new_zeros(1)
        positions = self.length + torch.cat([zero, self.tree_depths])
        writes = self.length + torch.arange(inputs.shape[0], device=self.device)
        visible = self.passes.tree_visibility(self.length, self.ancestry)
        hidden, logits = self.passes.run(inputs, positions, writes.clamp(max=self.capacity - 1), visible)
        self.verify_hidden.copy_(hidden)
        self.verify_logits = logits
        self.choices.copy_(self.verifier.choose(logits, settings, self.uniforms, self.sampling))

    def accept_phase(self, settings: GenerationSettings) -> None:
        """The accepted path; the target cache keeps it; the host's view of the round in ``out``."""
        tree = self._tree()
        acceptance = self.verifier.accept(tree, self.choices, self.ancestry, self.verify_logits, settings)
        inputs = torch.cat([self.root_token, self.tree_tokens])
        self.accepted_tokens.copy_(inputs[acceptance.keep])
        self.accepted_states.copy_(self.verify_hidden[acceptance.keep])
        self.passes.keep(self.length, acceptance.keep)
        self.start.copy_(self.length)
        self.count.copy_(acceptance.count)
        self.length += acceptance.count
        self.root_token.copy_(acceptance.bonus)
        depth = self.tree_depths.max().reshape(1)
        self.out.copy_(torch.cat([self.accepted_tokens[1:], acceptance.bonus, acceptance.count, depth]))

    def commit_phase(self, settings: GenerationSettings) -> None:
        """The draft commits the accepted true states (padded, ``count`` real) and drafts the new root."""
        with torch.no_grad():
            root_hidden = self.draft.start_round(self.draft_cache, self.accepted_tokens, self.accepted_states,
                                                 self.start, self.root_token, self.count)
        self.draft_cache.reset_tree()
        self.root_hidden.copy_(root_hidden)

    def _tree(self) -> DraftTree:
        return DraftTree(self.tree_tokens, self.tree_parents, self.tree_depths, self.tree_depths.float(),
                         self.tree.depth)

    # ---------------------------------------------------------------- rounds
    def round(self, settings: GenerationSettings, generator) -> RoundOutput:
        """One speculative round (or one AR step without a draft); one host read."""
        if not settings.greedy:
            self.uniforms.copy_(torch.rand(self.uniforms.shape[0], generator=generator, device=self.device))
            self.sampling.load(settings)
        phases = ("step",) if self.draft is None else ("draft", "verify", "accept", "commit")
        if self.graphs:
            graphs = self._graphs(settings, phases)
            for name in phases:
                graphs[name].replay()
        else:
            for name in phases:
                self._phase_functions[name](settings)
        values = self.out.tolist()  # the round's one host synchronisation
        if self.draft is None:
            return RoundOutput(values, 0)
        count, depth = values[-2], values[-1]
        return RoundOutput(values[: count - 1] + [values[-3]], depth)

    def profile_round(self, settings: GenerationSettings, generator) -> dict[str, float]:
        """One round with CUDA events between the phases (opt-in profiling, never in the hot loop):
        milliseconds per phase, and ``host`` = the host read plus Python bookkeeping after the last phase.
        Advances the generation like :meth:`round` (GPU with graphs only)."""
        phases = ("step",) if self.draft is None else ("draft", "verify", "accept", "commit")
        graphs = self._graphs(settings, phases)
        if not settings.greedy:
            self.uniforms.copy_(torch.rand(self.uniforms.shape[0], generator=generator, device=self.device))
            self.sampling.load(settings)
        events = [torch.cuda.Event(enable_timing=True) for _ in range(len(phases) + 1)]
        started = time.perf_counter()
        events[0].record()
        for index, name in enumerate(phases):
            graphs[name].replay()
            events[index + 1].record()
        self.out.tolist()
        total = 1e3 * (time.perf_counter() - started)
        timings = {name: events[i].elapsed_time(events[i + 1]) for i, name in enumerate(phases)}
        timings["host"] = max(0.0, total - sum(timings.values()))
        return timings

    def tail_step(self, settings: GenerationSettings, generator) -> int:
        """One eager AR step through the same state (the last tokens before the context limit, where a
        full-depth tree would not fit)."""
        if not settings.greedy:
            self.uniforms[:1].copy_(torch.rand(1, generator=generator, device=self.device))
            self.sampling.load(settings)
        self.step_phase(settings)
        return int(self.out[0])

    def plain_step(self, settings: GenerationSettings, generator) -> int:
        """One plain (AR) step through this state at full speed: the captured ``step`` phase with CUDA graphs
        (for a request that continues without speculation), else as :meth:`tail_step`."""
        if not self.graphs:
            return self.tail_step(settings, generator)
        graphs = self._graphs(settings, ("step",))
        if not settings.greedy:
            self.uniforms[:1].copy_(torch.rand(1, generator=generator, device=self.device))
            self.sampling.load(settings)
        graphs["step"].replay()
        return int(self.out[0])

    def warm_up(self) -> None:
        """Pay every compilation and capture a request could meet, now: a round and a tail step in each
        sampling mode (whose graphs then serve every temperature / top-k / top-p). Leaves the buffers
        holding garbage: the next :meth:`prefill` starts a generation afresh."""
        generator = torch.Generator(device=self.device).manual_seed(0)
        for settings in (GenerationSettings(), GenerationSettings(temperature=1.0),
                         GenerationSettings(temperature=1.0, top_p=0.9)):
            self.prefill(torch.zeros(1, dtype=torch.long, device=self.device), settings, generator)
            self.round(settings, generator)
            self.tail_step(settings, generator)
            if self.draft is not None:
                self.plain_step(settings, generator)  # the step graph a request falling back to AR replays

    def _graphs(self, settings: GenerationSettings, phases) -> dict[str, torch.cuda.CUDAGraph]:
        key = (phases, settings.mode)  # the sampling settings themselves live in device tensors
        graphs = self._captured.get(key)
        if graphs is None:
            graphs = self._captured[key] = self._capture(settings, phases)
        return graphs

    def _capture(self, settings, phases) -> dict[str, torch.cuda.CUDAGraph]:
        """Warm each phase up (compiles the target pass on first use), then capture it. The warm-up runs
        over the live buffers, so save and restore them: capturing must not change the generation."""
        started = time.perf_counter()
        saved = self._snapshot()
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for attempt in range(2):
                # BEAGLE_SYNC_DEBUG=1: report every host synchronisation of the second warm-up (a phase
                # with one cannot be captured).
                debug = attempt == 1 and os.environ.get("BEAGLE_SYNC_DEBUG") == "1"
                if debug:
                    torch.cuda.set_sync_debug_mode("warn")
                for name in phases:
                    self._phase_functions[name](settings)
                if debug:
                    torch.cuda.set_sync_debug_mode("default")
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graphs = {}
        for name in phases:
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._phase_functions[name](settings)
            graphs[name] = graph
        self._restore(saved)
        torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - started
        self.capture_seconds += seconds
        logger.info("captured the %s phase graphs in %.1f s", "/".join(phases), seconds)
        return graphs

    def _snapshot(self) -> dict[str, torch.Tensor]:
        tensors = {"length": self.length, "root_token": self.root_token}
        if self.draft is not None:
            tensors |= {"root_hidden": self.root_hidden, "draft_keys": self.draft_cache.keys,
                        "draft_values": self.draft_cache.values, "draft_length": self.draft_cache.length_t,
                        "draft_last_state": self.draft_cache.last_state}
        tensors["target_cache"] = self.passes.cache.store
        return {name: tensor.clone() for name, tensor in tensors.items()} | {"_live": tensors}

    def _restore(self, saved) -> None:
        for name, tensor in saved.pop("_live").items():
            tensor.copy_(saved[name])
