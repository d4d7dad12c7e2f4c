"""Aggregation of N per-patch style vectors into one style vector.

Several patches of one slide describe its style better than one (stain varies across a slide), and
at synthesis time the number of available patches may differ from training. Hence the choices:

* ``mean`` / ``max``: parameter-free, permutation-invariant, any N.
* ``attention``: pooling by multi-head attention with one learned query (a set-transformer "PMA"
  block without positional encoding): permutation-invariant, any N, and it can learn to down-weight
  an atypical patch (a fold, a bubble) that a mean would average in.
* ``mlp``: concatenate the N vectors and mix them with an MLP (STEDM's default "linear"). It depends
  on patch order and only works for the N it was built for; kept for comparison with the paper.
"""

from __future__ import annotations

import torch
from torch import nn

from sedm.errors import InputError

AGGREGATIONS = ("mean", "max", "mlp", "attention")


class MeanAggregation(nn.Module):
    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens.mean(dim=1)


class MaxAggregation(nn.Module):
    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens.amax(dim=1)


class MlpAggregation(nn.Module):
    """(B, N, D) -> (B, D) through an MLP on the concatenation; N is fixed at construction."""

    def __init__(self, dim: int, n_style: int) -> None:
        super().__init__()
        self.n_style = n_style
        self.net = nn.Sequential(nn.Linear(n_style * dim, 2 * dim), nn.SiLU(), nn.Linear(2 * dim, dim))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.shape[1] != self.n_style:
            raise InputError(None, "style images", f"the mlp aggregation was built for exactly {self.n_style} "
                             f"style patches per sample, got {tokens.shape[1]}",
                             f"pass {self.n_style} style patches, or train with aggregation mean, max or attention "
                             "to allow any number")
        return self.net(tokens.flatten(1))


class AttentionAggregation(nn.Module):
    """Attention pooling with a learned query, then a residual MLP: permutation-invariant, any N."""

    def __init__(self, dim: int, heads: int = 4) -> None:
        super().__init__()
        heads = heads if dim % heads == 0 else 1
        self.query = nn.Parameter(torch.randn(1, 1, dim) * dim**-0.5)
        self.norm_kv = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm_out = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.SiLU(), nn.Linear(2 * dim, dim))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        kv = self.norm_kv(tokens)
        q = self.query.expand(tokens.shape[0], -1, -1)
        pooled = self.attn(q, kv, kv, need_weights=False)[0][:, 0] + tokens.mean(dim=1)
        return pooled + self.mlp(self.norm_out(pooled))


def build_aggregation(kind: str, dim: int, n_style: int) -> nn.Module:
    """The aggregation block named ``kind`` (one of :data:`AGGREGATIONS`)."""
    if kind == "mean":
        return MeanAggregation()
    if kind == "max":
        return MaxAggregation()
    if kind == "mlp":
        return MlpAggregation(dim, n_style)
    if kind == "attention":
        return AttentionAggregation(dim)
    raise InputError(None, "diffusion.aggregation", f"unknown aggregation {kind!r}", f"use one of {AGGREGATIONS}")
