"""Tests of the semantic-ID tokenizers: reconstructions are sums of the chosen centroids, balanced k-means meets its
size bound, RQ-KMeans+ starts as the RQ-KMeans it is built from, disambiguation leaves no collision, the metrics
count what they say, and a seed fixes the codes. Small shapes: the file runs in seconds."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from recbole_oneranker.model.tokenizers import (
    METHODS,
    RQVAEConfig,
    TokenizerConfig,
    balanced_assignment,
    balanced_rq_kmeans,
    code_metrics,
    disambiguation_codes,
    fit_semantic_ids,
    rq_kmeans,
    rq_kmeans_plus_init,
    train_autoencoder,
)

SMALL_AUTOENCODER = RQVAEConfig(epochs=5, batch_size=64, hidden_dim=16, latent_dim=8)


def _clustered(seed: int, num_items: int = 300, dim: int = 8, num_groups: int = 12) -> torch.Tensor:
    """Items around a few group centres, as item embeddings are: ``(num_items, dim)``."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(num_groups, dim, generator=generator) * 3
    groups = torch.randint(num_groups, (num_items,), generator=generator)
    return centres[groups] + torch.randn(num_items, dim, generator=generator) * 0.5


@pytest.mark.parametrize("quantise", [rq_kmeans, balanced_rq_kmeans])
def test_reconstruction_is_the_sum_of_the_chosen_centroids(quantise):
    vectors = _clustered(0)
    fitted = quantise(vectors, levels=3, codebook_size=8, seed=0)
    manual = sum(fitted.codebooks[level][fitted.codes[:, level]] for level in range(3))
    torch.testing.assert_close(fitted.reconstruct(), manual)
    ids = fit_semantic_ids(
        vectors, TokenizerConfig(method=quantise.__name__.replace("_", "-"), levels=3, codebook_size=8)
    )
    torch.testing.assert_close(ids.reconstruction, manual)
    expected_error = (vectors - manual).pow(2).sum() / (vectors - vectors.mean(0)).pow(2).sum()
    assert ids.metrics["reconstruction_error"] == pytest.approx(float(expected_error), rel=1e-5)


def test_rq_kmeans_codes_are_the_nearest_centroids_of_each_residual():
    vectors = _clustered(1)
    fitted = rq_kmeans(vectors, levels=2, codebook_size=6, seed=0)
    residual = vectors.clone()
    for level in range(2):
        distances = torch.cdist(residual, fitted.codebooks[level])  # [N, K]
        chosen = distances.gather(1, fitted.codes[:, level : level + 1]).squeeze(1)
        assert torch.all(chosen <= distances.min(dim=1).values + 1e-5)
        residual = residual - fitted.codebooks[level][fitted.codes[:, level]]


@pytest.mark.parametrize(("num_points", "num_clusters"), [(100, 7), (64, 8), (301, 16), (30, 29)])
def test_balanced_assignment_meets_its_size_bound(num_points, num_clusters):
    generator = torch.Generator().manual_seed(num_points)
    points = torch.randn(num_points, 4, generator=generator) ** 3  # skewed: unconstrained sizes would differ a lot
    centroids = torch.randn(num_clusters, 4, generator=generator)
    sizes = torch.bincount(balanced_assignment(points, centroids), minlength=num_clusters)
    assert sizes.sum() == num_points
    assert sizes.min() >= num_points // num_clusters and sizes.max() <= math.ceil(num_points / num_clusters)


def test_balanced_residual_kmeans_balances_every_level_where_rq_kmeans_does_not():
    vectors = _clustered(2, num_items=250)
    balanced = balanced_rq_kmeans(vectors, levels=3, codebook_size=8, seed=0)
    for level in range(3):
        sizes = torch.bincount(balanced.codes[:, level], minlength=8)
        assert sizes.min() >= 250 // 8 and sizes.max() <= math.ceil(250 / 8)
    plain = rq_kmeans(vectors, levels=3, codebook_size=8, seed=0)
    assert torch.bincount(plain.codes[:, 0], minlength=8).max() > math.ceil(250 / 8)


def test_rq_kmeans_plus_starts_as_rq_kmeans_then_training_lowers_its_loss():
    vectors = _clustered(3)
    config = RQVAEConfig(levels=2, codebook_size=8, epochs=30, batch_size=64, hidden_dim=32, learning_rate=3e-3)
    model, initial = rq_kmeans_plus_init(vectors, config)
    with torch.no_grad():
        start = model(vectors)
    assert torch.equal(start.codes, initial.codes)  # the first forward reproduces the RQ-KMeans codes...
    torch.testing.assert_close(start.reconstruction, initial.reconstruct())  # ...and its reconstruction
    trained = train_autoencoder(model, vectors, config)
    with torch.no_grad():
        end = model(vectors)
    assert trained.loss_before == pytest.approx(float(start.loss)) and trained.loss_after == pytest.approx(
        float(end.loss)
    )
    assert end.loss < 0.9 * start.loss  # reconstruction + codebook + commitment terms
    assert not torch.equal(end.codes, start.codes)  # training moved on from the k-means codes


@pytest.mark.parametrize("method", METHODS)
def test_every_method_gives_unique_codes_and_the_same_codes_for_the_same_seed(method):
    vectors = _clustered(4, num_items=200, num_groups=3)  # few groups: many collisions before disambiguation
    config = TokenizerConfig(method=method, levels=2, codebook_size=4, autoencoder=SMALL_AUTOENCODER)
    ids = fit_semantic_ids(vectors, config)
    assert ids.codes.shape == (200, 3)
    assert ids.metrics["collision_rate"] > 0
    assert len(torch.unique(ids.codes, dim=0)) == 200  # zero collisions after disambiguation
    assert ids.codebook_sizes[-1] == ids.metrics["max_items_per_tuple"]
    assert torch.equal(fit_semantic_ids(vectors, config).codes, ids.codes)
    other_seed = fit_semantic_ids(vectors, replace(config, seed=1))
    assert not torch.equal(other_seed.codes, ids.codes)


def test_disambiguation_numbers_the_items_of_each_tuple_in_item_order():
    codes = torch.tensor([[2, 1], [0, 0], [2, 1], [0, 1], [2, 1], [0, 0]])
    assert disambiguation_codes(codes).tolist() == [0, 0, 1, 0, 2, 1]


def test_metrics_count_collisions_usage_and_balance():
    codes = torch.tensor([[0, 0], [0, 0], [0, 1], [1, 1]])  # 3 distinct tuples of 4; level 0 loads 3 and 1
    vectors = torch.randn(4, 2)
    metrics = code_metrics(vectors, codes, vectors, codebook_size=4)
    assert metrics["collision_rate"] == pytest.approx(0.25)
    assert metrics["max_items_per_tuple"] == 2
    assert metrics["utilisation"] == [0.5, 0.5]
    assert metrics["max_load_ratio"] == [pytest.approx(3.0), pytest.approx(2.0)]
    entropy = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25)) / math.log(4)
    assert metrics["entropy"] == [pytest.approx(entropy), pytest.approx(0.5)]
    assert metrics["reconstruction_error"] == 0.0


def test_bad_configs_are_refused():
    with pytest.raises(ValueError, match="unknown tokenizer method"):
        TokenizerConfig(method="kmeans++")
    with pytest.raises(ValueError, match="N >= codebook size"):
        rq_kmeans(torch.randn(5, 2), levels=1, codebook_size=8)
