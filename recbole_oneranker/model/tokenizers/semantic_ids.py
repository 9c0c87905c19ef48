"""Semantic IDs: one entry point over the four tokenizers, TIGER's disambiguation code, and quality metrics.

``fit_semantic_ids(vectors, TokenizerConfig(method=...))`` quantises ``N`` item vectors into ``L`` codes each, then
appends a last code that tells apart the items sharing a tuple (0 for the first, 1 for the second, ...: TIGER), so
every item's ``L + 1`` codes are unique. The metrics describe the ``L`` codes before that last one.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor

from .residual_kmeans import Progress, balanced_rq_kmeans, rq_kmeans
from .rq_vae import RQVAEConfig, rq_kmeans_plus, rq_vae

METHODS = ("rq-kmeans", "balanced-rq-kmeans", "rq-kmeans-plus", "rq-vae")


@dataclass(frozen=True)
class TokenizerConfig:
    """What to fit.

    Attributes:
        method: one of :data:`METHODS`.
        levels: ``L`` quantisation levels (the disambiguation code comes on top).
        codebook_size: ``K`` codes per level.
        seed: seeds every random choice; the same seed and vectors give the same codes.
        kmeans_inits: scikit-learn ``n_init`` of RQ-KMeans's k-means (RQ-KMeans and RQ-KMeans+).
        balanced_iters: assignment/update rounds per level of balanced k-means.
        autoencoder: sizes and training of RQ-VAE and RQ-KMeans+ (its levels, codebook size and seed are
            overridden by the fields above).
    """

    method: str = "rq-kmeans"
    levels: int = 3
    codebook_size: int = 256
    seed: int = 0
    kmeans_inits: int = 1
    balanced_iters: int = 10
    autoencoder: RQVAEConfig = field(default_factory=RQVAEConfig)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown tokenizer method '{self.method}'; choose one of {', '.join(METHODS)}")
        if self.levels < 1 or self.codebook_size < 2:
            raise ValueError(f"need levels >= 1 and codebook_size >= 2, got {self.levels} and {self.codebook_size}")

    def autoencoder_config(self) -> RQVAEConfig:
        """:attr:`autoencoder` with this config's levels, codebook size and seed."""
        return replace(self.autoencoder, levels=self.levels, codebook_size=self.codebook_size, seed=self.seed)


@dataclass(frozen=True)
class SemanticIds:
    """The result of :func:`fit_semantic_ids` for ``N`` items.

    Attributes:
        codes: ``(N, L + 1)`` int64: ``L`` quantisation codes, then the disambiguation code; rows are unique.
        codebooks: ``(L, K, D')`` float32 centroids (``D'`` the latent width for the autoencoders).
        reconstruction: ``(N, D)``: the sum of the chosen centroids (k-means methods) or the decoder's output.
        metrics: see :func:`code_metrics`, plus ``fit_seconds`` and, for the autoencoders, ``autoencoder_loss``
            (their loss on all items before and after training).
    """

    codes: Tensor
    codebooks: Tensor
    reconstruction: Tensor
    metrics: dict[str, Any]

    @property
    def codebook_sizes(self) -> list[int]:
        """Codes per level, ``L + 1`` entries: ``K`` for each quantisation level, then the largest group's size."""
        levels, size = self.codebooks.shape[:2]
        return [size] * levels + [int(self.codes[:, -1].max()) + 1]


def disambiguation_codes(codes: Tensor) -> Tensor:
    """``(N,)`` int64: for ``(N, L)`` codes, each item's rank (in item order) among the items sharing its tuple.

    >>> disambiguation_codes(torch.tensor([[1, 2], [0, 0], [1, 2], [1, 2]])).tolist()
    [0, 0, 1, 2]
    """
    _, group = torch.unique(codes, dim=0, return_inverse=True)  # [N]
    order = torch.argsort(group, stable=True)
    sizes = torch.bincount(group)
    group_start = torch.cumsum(sizes, dim=0) - sizes
    rank = torch.empty_like(group)
    rank[order] = torch.arange(len(group)) - group_start[group[order]]
    return rank


def code_metrics(vectors: Tensor, codes: Tensor, reconstruction: Tensor, codebook_size: int) -> dict[str, Any]:
    """Quality of ``(N, L)`` codes of ``(N, D)`` vectors reconstructed as ``(N, D)``.

    Returns:
        ``collision_rate``: ``1 - distinct tuples / N`` (0 when every item has a tuple of its own);
        ``max_items_per_tuple``; per level (lists of ``L``): ``utilisation`` (share of the ``K`` codes used),
        ``max_load_ratio`` (largest code's items over the balanced ``N / K``) and ``entropy`` (of the codes'
        distribution, over ``log K``: 1 is perfectly balanced); ``reconstruction_error``: squared error over the
        vectors' total variance (0 perfect, 1 as bad as the mean vector).
    """
    num_items, levels = codes.shape
    unique_tuples, group_sizes = torch.unique(codes, dim=0, return_counts=True)
    loads = [torch.bincount(codes[:, level], minlength=codebook_size).double() for level in range(levels)]
    shares = [load[load > 0] / num_items for load in loads]
    variance = (vectors - vectors.mean(dim=0)).pow(2).sum()
    return {
        "collision_rate": 1.0 - len(unique_tuples) / num_items,
        "max_items_per_tuple": int(group_sizes.max()),
        "utilisation": [float((load > 0).double().mean()) for load in loads],
        "max_load_ratio": [float(load.max() * codebook_size / num_items) for load in loads],
        "entropy": [float(-(share * share.log()).sum() / math.log(codebook_size)) for share in shares],
        "reconstruction_error": float((vectors - reconstruction).pow(2).sum() / variance.clamp(min=1e-12)),
    }


def _fit_codes(
    vectors: Tensor, config: TokenizerConfig, progress: Progress | None
) -> tuple[Tensor, Tensor, Tensor, dict[str, Any]]:
    """``(N, L)`` codes, ``(L, K, D')`` codebooks, ``(N, D)`` reconstruction of ``config.method``, and for the
    autoencoders ``autoencoder_loss``: their loss on all items before and after training."""
    if config.method == "rq-kmeans":
        fitted = rq_kmeans(vectors, config.levels, config.codebook_size, config.seed, config.kmeans_inits, progress)
        return fitted.codes, fitted.codebooks, fitted.reconstruct(), {}
    if config.method == "balanced-rq-kmeans":
        fitted = balanced_rq_kmeans(
            vectors, config.levels, config.codebook_size, config.seed, config.balanced_iters, progress
        )
        return fitted.codes, fitted.codebooks, fitted.reconstruct(), {}
    train = rq_vae if config.method == "rq-vae" else rq_kmeans_plus
    trained = train(vectors, config.autoencoder_config(), progress)
    with torch.no_grad():
        output = trained.model(vectors)
    losses = {"autoencoder_loss": [trained.loss_before, trained.loss_after]}
    return output.codes, trained.model.codebooks.detach().clone(), output.reconstruction, losses


def fit_semantic_ids(vectors: Tensor, config: TokenizerConfig, progress: Progress | None = None) -> SemanticIds:
    """Quantise ``vectors`` (``(N, D)`` float, ``N >= codebook_size``) with ``config.method``.

    Args:
        vectors: one row per item.
        config: method, sizes, seed.
        progress: called with a line per level (k-means) or per 10 epochs (autoencoders).

    Returns:
        :class:`SemanticIds` with ``(N, L + 1)`` unique codes and the metrics of the ``L`` codes.

    >>> ids = fit_semantic_ids(torch.randn(40, 4), TokenizerConfig(levels=2, codebook_size=4))
    >>> ids.codes.shape, len(torch.unique(ids.codes, dim=0))
    (torch.Size([40, 3]), 40)
    """
    vectors = vectors.detach().float()
    started = time.perf_counter()
    codes, codebooks, reconstruction, losses = _fit_codes(vectors, config, progress)
    fit_seconds = time.perf_counter() - started
    metrics = {**code_metrics(vectors, codes, reconstruction, config.codebook_size), **losses}
    unique_codes = torch.cat([codes, disambiguation_codes(codes).unsqueeze(1)], dim=1)
    return SemanticIds(unique_codes, codebooks, reconstruction, {**metrics, "fit_seconds": fit_seconds})
