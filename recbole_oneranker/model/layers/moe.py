"""A sparse mixture-of-experts feed-forward block with loss-free load balancing, and its dense counterpart.

Each token is sent to the ``top_k`` experts of highest affinity ``sigmoid(router(x))`` and gets their outputs
weighted by its normalised affinities. Balancing is *loss-free* (the OneRec technical report's choice; Wang et al.
2024, as in DeepSeek-V3): a per-expert bias, added to the affinities only to choose the experts, rises for experts
that got fewer tokens than average and falls for the others after every training call. No auxiliary loss competes
with the recommendation loss and no loss weight needs tuning; the bias never enters the gates, so no gradient flows
through it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["FeedForward", "MixtureOfExperts", "MoEConfig", "feed_forward"]


@dataclass
class MoEConfig:
    """Sizes of a :class:`MixtureOfExperts` (or of the dense block of equal active parameters).

    Attributes:
        hidden_size: ``D``.
        expert_inner_size: ``F``, the hidden width of one expert.
        num_experts: ``E`` (OneRec: 24).
        top_k: experts per token (OneRec: 2).
        bias_update_rate: how far a training call moves each expert's balancing bias (0 switches balancing off).
        sparse: False gives the dense ablation: one FFN of width ``top_k * F``, the active width of the mixture.
    """

    hidden_size: int
    expert_inner_size: int
    num_experts: int = 8
    top_k: int = 2
    bias_update_rate: float = 1e-3
    sparse: bool = True

    def __post_init__(self) -> None:
        if min(self.hidden_size, self.expert_inner_size, self.num_experts, self.top_k) < 1:
            raise ValueError(f"sizes must be positive: {self}")
        if self.top_k > self.num_experts:
            raise ValueError(f"top_k={self.top_k} exceeds num_experts={self.num_experts}")
        if self.bias_update_rate < 0:
            raise ValueError(f"bias_update_rate must be >= 0, got {self.bias_update_rate}")


class FeedForward(nn.Module):
    """The dense block: ``Linear(D, inner) -> GELU -> Linear(inner, D)``; ``(..., D) -> (..., D)``."""

    def __init__(self, hidden_size: int, inner_size: int) -> None:
        super().__init__()
        self.inner: nn.Linear = nn.Linear(hidden_size, inner_size)
        self.outer: nn.Linear = nn.Linear(inner_size, hidden_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.outer(F.gelu(self.inner(x)))


class MixtureOfExperts(nn.Module):
    """Top-k routed experts with loss-free bias balancing (module docstring).

    Call Args:
        x: ``(..., D)``.

    Returns:
        ``(..., D)``. The routing counts of every call accumulate until :meth:`reset_load`.

    >>> moe = MixtureOfExperts(MoEConfig(hidden_size=8, expert_inner_size=4, num_experts=4))
    >>> moe(torch.randn(2, 3, 8)).shape, int(moe.expert_load().sum())
    (torch.Size([2, 3, 8]), 12)
    """

    def __init__(self, config: MoEConfig) -> None:
        super().__init__()
        self.config: MoEConfig = config
        d, f, e = config.hidden_size, config.expert_inner_size, config.num_experts
        self.router: nn.Linear = nn.Linear(d, e, bias=False)
        self.inner_weight: nn.Parameter = nn.Parameter(torch.randn(e, d, f) / math.sqrt(d))
        self.inner_bias: nn.Parameter = nn.Parameter(torch.zeros(e, f))
        self.outer_weight: nn.Parameter = nn.Parameter(torch.randn(e, f, d) / math.sqrt(f))
        self.outer_bias: nn.Parameter = nn.Parameter(torch.zeros(e, d))
        self.balancing_bias: Tensor
        self.register_buffer("balancing_bias", torch.zeros(e))  # learned state: saved with the model
        self.assignments: Tensor
        self.register_buffer("assignments", torch.zeros(e), persistent=False)

    def route(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(experts, gates)``, each ``(T, top_k)``, for tokens ``x`` ``(T, D)``: the chosen experts (distinct per
        token) and their weights (summing to 1 per token)."""
        affinity = torch.sigmoid(self.router(x))  # [T, E]
        experts = (affinity + self.balancing_bias).topk(self.config.top_k, dim=-1).indices  # the bias only chooses
        gates = affinity.gather(1, experts)
        return experts, gates / gates.sum(-1, keepdim=True)

    def expert(self, index: int, x: Tensor) -> Tensor:
        """``(T, D)``: expert ``index`` applied to ``x`` ``(T, D)``."""
        hidden = F.gelu(x @ self.inner_weight[index] + self.inner_bias[index])
        return hidden @ self.outer_weight[index] + self.outer_bias[index]

    def forward(self, x: Tensor) -> Tensor:
        tokens = x.reshape(-1, x.shape[-1])
        experts, gates = self.route(tokens)
        out = torch.zeros_like(tokens)
        for index in range(self.config.num_experts):  # a loop over E experts, each on its own tokens only
            token, slot = (experts == index).nonzero(as_tuple=True)
            if len(token):
                out = out.index_add(0, token, gates[token, slot].unsqueeze(-1) * self.expert(index, tokens[token]))
        load = torch.bincount(experts.flatten(), minlength=self.config.num_experts).to(self.assignments.dtype)
        self.assignments += load
        if self.training:
            self._balance(load)
        return out.view_as(x)

    @torch.no_grad()
    def _balance(self, load: Tensor) -> None:
        """Raise the bias of experts below the mean load, lower it above (sign updates, as in loss-free balancing)."""
        self.balancing_bias += self.config.bias_update_rate * torch.sign(load.mean() - load)

    def expert_load(self) -> Tensor:
        """``(E,)`` tokens routed to each expert since the last :meth:`reset_load` (each token counts ``top_k``
        times, once per expert)."""
        return self.assignments.clone()

    def reset_load(self) -> None:
        self.assignments.zero_()


def feed_forward(config: MoEConfig) -> nn.Module:
    """The decoder's feed-forward block: the mixture, or (``sparse=False``) a dense FFN of its active width."""
    if config.sparse:
        return MixtureOfExperts(config)
    return FeedForward(config.hidden_size, config.top_k * config.expert_inner_size)
