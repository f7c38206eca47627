"""The Beagle draft as a vLLM model (imports vLLM: load it only inside vLLM, through the plugin).

vLLM's EAGLE proposer calls ``forward(input_ids, positions, hidden_states)`` with slot i holding the token
x_{i+1}, the hidden state h_i and position i, and keeps one KV-cache entry per slot. Beagle (paper Eq. 1-2)
fits that pairing exactly:

    q_i   = norm_q(e(x_{i+1})) W_Q        rotated at position i + 1   (the query token's own position)
    k_i   = norm_s(h_i) W_K               rotated at position i
    v_i   = norm_s(h_i) W_V
    y_i   = o_proj(Attention(q_i; k_j, v_j for slots j <= i)) + e(x_{i+1})     (causal over slots)
    out_i = MLP(norm_m(y_i)) + y_i        -> the target's LM head (no final norm), and the next step's h

so the query of x_{i+1} sees the states h_j, j < i+1, as in Beagle; with the last-state skip
(``last_state_skip`` in the config) y_i also adds W_s · norm_s(h_i): slot i's own state is the newest one its
query sees, the skip's input in Beagle; while drafting, vLLM feeds the draft's
own output as the next slot's hidden state, i.e. Beagle's concat mode (draft states appended as keys/values).
vLLM drafts a chain (one token per step); Beagle's dynamic tree stays in ``beagle generate`` / ``serve``.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from vllm.config import VllmConfig
from vllm.distributed import get_tensor_model_parallel_world_size
from vllm.model_executor.layers.attention import Attention
from vllm.model_executor.layers.layernorm import RMSNorm
from vllm.model_executor.layers.linear import ColumnParallelLinear, ReplicatedLinear, RowParallelLinear
from vllm.model_executor.layers.logits_processor import LogitsProcessor
from vllm.model_executor.layers.rotary_embedding import get_rope
from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead, VocabParallelEmbedding
from vllm.model_executor.model_loader.weight_utils import default_weight_loader
from vllm.model_executor.models.interfaces import SupportsEagle
from vllm.model_executor.models.llama import LlamaMLP
from vllm.model_executor.models.utils import maybe_prefix


def _rope_parameters(config) -> dict:
    parameters = getattr(config, "rope_parameters", None)
    if isinstance(parameters, dict) and parameters:
        return dict(parameters)
    return {"rope_type": "default", "rope_theta": getattr(config, "rope_theta", 10000.0)}


class BeagleCrossAttention(nn.Module):
    """Queries from the token stream, keys/values from the state stream, one vLLM ``Attention`` (paged KV)."""

    def __init__(self, config, vllm_config: VllmConfig, prefix: str):
        super().__init__()
        tp = get_tensor_model_parallel_world_size()
        self.total_heads = config.num_attention_heads
        self.total_kv_heads = config.num_key_value_heads
        if self.total_heads % tp or self.total_kv_heads % tp:
            raise ValueError(f"Beagle draft: {self.total_heads} heads / {self.total_kv_heads} KV heads do not "
                             f"split over tensor parallel size {tp}")
        self.heads = self.total_heads // tp
        self.kv_heads = self.total_kv_heads // tp
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.total_heads
        bias = bool(getattr(config, "attention_bias", False))
        size = config.hidden_size
        self.q_proj = ColumnParallelLinear(size, self.total_heads * self.head_dim, bias=bias,
                                           prefix=f"{prefix}.q_proj")
        self.k_proj = ColumnParallelLinear(size, self.total_kv_heads * self.head_dim, bias=bias,
                                           prefix=f"{prefix}.k_proj")
        self.v_proj = ColumnParallelLinear(size, self.total_kv_heads * self.head_dim, bias=bias,
                                           prefix=f"{prefix}.v_proj")
        self.o_proj = RowParallelLinear(self.total_heads * self.head_dim, size, bias=False,
                                        prefix=f"{prefix}.o_proj")
        # +1: queries sit one position ahead of their slot.
        self.rotary_emb = get_rope(self.head_dim, max_position=config.max_position_embeddings + 1,
                                   rope_parameters=_rope_parameters(config), is_neox_style=True)
        self.attn = Attention(self.heads, self.head_dim, self.head_dim**-0.5, num_kv_heads=self.kv_heads,
                              cache_config=vllm_config.cache_config, prefix=f"{prefix}.attn")

    def forward(self, positions: torch.Tensor, queries: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        q, _ = self.q_proj(queries)
        k, _ = self.k_proj(states)
        v, _ = self.v_proj(states)
        q, _ = self.rotary_emb(positions + 1, q.contiguous())
        k, _ = self.rotary_emb(positions, k.contiguous())
        out, _ = self.o_proj(self.attn(q, k, v))
        return out


class BeagleModel(nn.Module):
    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "", start_layer_id: int = 0):
        super().__init__()
        config = vllm_config.speculative_config.draft_model_config.hf_config
        self.config = config
        size, eps = config.hidden_size, config.rms_norm_eps
        self.embed_tokens = VocabParallelEmbedding(config.vocab_size, size, prefix=maybe_prefix(prefix, "embed_tokens"))
        self.query_norm = RMSNorm(size, eps=eps)
        self.state_norm = RMSNorm(size, eps=eps)
        # The attention layer's name must not clash with the target's layers (vLLM keys the KV cache by name).
        self.cross_attn = BeagleCrossAttention(config, vllm_config,
                                               prefix=maybe_prefix(prefix, f"layers.{start_layer_id}.cross_attn"))
        self.mlp_norm = RMSNorm(size, eps=eps)
        self.mlp = LlamaMLP(size, config.intermediate_size, "silu", prefix=maybe_prefix(prefix, "mlp"))
        self.skip_norm = self.skip = None
        if getattr(config, "last_state_skip", False):
            self.skip_norm = RMSNorm(size, eps=eps)
            self.skip = ReplicatedLinear(size, size, bias=False, prefix=maybe_prefix(prefix, "skip"))

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.embed_tokens(input_ids)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, hidden_states: torch.Tensor,
                inputs_embeds: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        embedded = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        attended = self.cross_attn(positions, self.query_norm(embedded), self.state_norm(hidden_states)) + embedded
        if self.skip is not None:
            attended = attended + self.skip(self.skip_norm(hidden_states))[0]
        out = self.mlp(self.mlp_norm(attended)) + attended
        return out, out


class BeagleDraftForCausalLM(nn.Module, SupportsEagle):
    """vLLM's ``EagleBeagleDraftForCausalLM`` (also registered under ``BeagleDraftForCausalLM``): the weights
    of ``beagle export --format vllm`` of a Beagle draft; the target's embedding and LM head are shared."""

    has_own_lm_head = False
    has_own_embed_tokens = False

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = ""):
        super().__init__()
        config = vllm_config.speculative_config.draft_model_config.hf_config
        self.config = config
        if getattr(config, "draft_vocab_size", None) is None:
            config.draft_vocab_size = config.vocab_size
        target_layers = vllm_config.model_config.get_num_layers(vllm_config.parallel_config)
        self.model = BeagleModel(vllm_config=vllm_config, prefix=maybe_prefix(prefix, "model"),
                                 start_layer_id=target_layers)
        # Replaced by the target's LM head when vLLM loads the proposer (has_own_lm_head is False).
        self.lm_head = ParallelLMHead(config.vocab_size, config.hidden_size, prefix=maybe_prefix(prefix, "lm_head"))
        self.logits_processor = LogitsProcessor(config.vocab_size, scale=getattr(config, "logit_scale", 1.0))

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.embed_input_ids(input_ids)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, hidden_states: torch.Tensor,
                inputs_embeds: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model(input_ids, positions, hidden_states, inputs_embeds)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        return self.logits_processor(self.lm_head, hidden_states)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Our checkpoint names (``cross_attn.q_proj.weight``, ``mlp.gate_proj.weight``, ...) -> parameters."""
        params = dict(self.named_parameters())
        loaded: set[str] = set()
        for name, tensor in weights:
            if name.startswith("lm_head") or "embed_tokens" in name:
                if name.startswith("lm_head"):
                    self.has_own_lm_head = True
                else:
                    self.has_own_embed_tokens = True
                key = name if name.startswith("lm_head") else f"model.{name.removeprefix('model.')}"
            else:
                key = f"model.{name}"
            shard = None
            for source, merged, index in ((".gate_proj.", ".gate_up_proj.", 0), (".up_proj.", ".gate_up_proj.", 1)):
                if source in key:
                    key, shard = key.replace(source, merged), index
            if key not in params:
                raise ValueError(f"Beagle draft checkpoint has an unexpected tensor {name!r}; export the draft "
                                 "again with `beagle export --format vllm`")
            param = params[key]
            loader = getattr(param, "weight_loader", default_weight_loader)
            if shard is None:
                loader(param, tensor)
            else:
                loader(param, tensor, shard)
            loaded.add(key)
        missing = {key for key in params if key not in loaded and "embed_tokens" not in key and "lm_head" not in key}
        if missing:
            raise ValueError(f"Beagle draft checkpoint lacks {sorted(missing)}; export the draft again with "
                             "`beagle export --format vllm`")
        # The shared embedding / LM head come from the target (vLLM swaps them in after loading).
        return loaded | {key for key in params if "embed_tokens" in key or "lm_head" in key}
