"""Per-call decoding statistics."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class DecodeStats:
    """new_tokens: tokens emitted; target_passes: target forwards (prefill included);
    accept_lengths: draft tokens accepted per verification round; tree_depths: drafted depth per round;
    times in seconds (draft: drafting the trees, verify: target passes + acceptance, other: the rest);
    mode: "autoregressive" (no draft), "speculative", or "fallback" (speculation lost for this request and
    it went on with plain steps from token ``fallback_at_token``); round_cost_steps: what a round costs in
    plain steps (measured once per generator; None when not adaptive)."""

    new_tokens: int = 0
    target_passes: int = 0
    accept_lengths: list[int] = field(default_factory=list)
    tree_depths: list[int] = field(default_factory=list)
    time_draft: float = 0.0
    time_verify: float = 0.0
    time_prefill: float = 0.0
    time_total: float = 0.0
    stop_reason: str = ""
    mode: str = ""
    fallback_at_token: int | None = None
    round_cost_steps: float | None = None

    @property
    def tau(self) -> float:
        """Mean tokens per target pass, bonus included (1.0 for autoregressive decoding)."""
        return self.new_tokens / self.target_passes if self.target_passes else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.time_total if self.time_total > 0 else 0.0

    def acceptance_by_depth(self) -> list[float]:
        """α_d = P(depth-d token accepted | depth d-1 accepted), over rounds whose tree reached depth d."""
        rates = []
        for depth in range(1, max(self.tree_depths, default=0) + 1):
            reached = [a for a, t in zip(self.accept_lengths, self.tree_depths) if t >= depth and a >= depth - 1]
            rates.append(sum(a >= depth for a in reached) / len(reached) if reached else 0.0)
        return rates

    def accept_length_histogram(self) -> list[int]:
        """counts[a] = rounds that accepted exactly a draft tokens."""
        counts = [0] * (max(self.accept_lengths, default=0) + 1)
        for length in self.accept_lengths:
            counts[length] += 1
        return counts

    def to_dict(self) -> dict:
        time_other = max(self.time_total - self.time_draft - self.time_verify - self.time_prefill, 0.0)
        return {
            "new_tokens": self.new_tokens,
            "target_passes": self.target_passes,
            "tau": round(self.tau, 4),
            "tokens_per_s": round(self.tokens_per_s, 3),
            "acceptance_by_depth": [round(r, 4) for r in self.acceptance_by_depth()],
            "accept_length_histogram": self.accept_length_histogram(),
            "time_s": {
                "total": round(self.time_total, 5),
                "prefill": round(self.time_prefill, 5),
                "draft": round(self.time_draft, 5),
                "verify": round(self.time_verify, 5),
                "other": round(time_other, 5),
            },
            "stop_reason": self.stop_reason,
            "mode": self.mode,
            "fallback_at_token": self.fallback_at_token,
            "round_cost_steps": None if self.round_cost_steps is None else round(self.round_cost_steps, 3),
        }
