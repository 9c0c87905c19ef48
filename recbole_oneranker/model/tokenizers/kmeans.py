"""K-means in plain PyTorch (k-means++ seeding, Lloyd iterations), deterministic for a given seed."""

from __future__ import annotations

import torch
from torch import Tensor


def kmeans(points: Tensor, num_clusters: int, num_iters: int = 20, seed: int = 0) -> Tensor:
    """Cluster ``points`` and return the centroids.

    Args:
        points: ``(N, D)`` float tensor, ``N >= num_clusters``.
        num_clusters: ``K``.
        num_iters: Lloyd iterations after k-means++ seeding (stops early when assignments no longer change).
        seed: seeds the k-means++ draws (a private generator: the global RNG is left untouched).

    Returns:
        ``(K, D)`` centroids. A cluster that loses all its points keeps its previous centroid.

    >>> points = torch.tensor([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0], [5.1, 5.0]])
    >>> sorted(round(total, 2) for total in kmeans(points, 2).sum(dim=1).tolist())
    [0.05, 10.05]
    """
    if points.dim() != 2 or len(points) < num_clusters or num_clusters < 1:
        raise ValueError(f"need a (N, D) tensor with N >= num_clusters={num_clusters}, got {tuple(points.shape)}")
    points = points.detach().float()
    generator = torch.Generator(device=points.device).manual_seed(seed)
    centroids = _kmeans_plus_plus(points, num_clusters, generator)
    assignment = None
    for _ in range(num_iters):
        new_assignment = torch.cdist(points, centroids).argmin(dim=1)  # [N]
        if assignment is not None and torch.equal(new_assignment, assignment):
            break
        assignment = new_assignment
        sums = torch.zeros_like(centroids).index_add_(0, assignment, points)  # [K, D]
        counts = torch.bincount(assignment, minlength=num_clusters).unsqueeze(1)  # [K, 1]
        centroids = torch.where(counts > 0, sums / counts.clamp(min=1), centroids)
    return centroids


def _kmeans_plus_plus(points: Tensor, num_clusters: int, generator: torch.Generator) -> Tensor:
    """k-means++ seeding: each new centre drawn with probability proportional to the squared distance."""
    first = torch.randint(len(points), (1,), generator=generator, device=points.device)
    centroids = points[first]  # [1, D]
    closest = torch.cdist(points, centroids).squeeze(1) ** 2  # [N]
    for _ in range(1, num_clusters):
        weights = closest if closest.sum() > 0 else torch.ones_like(closest)
        index = torch.multinomial(weights, 1, generator=generator)
        centroids = torch.cat([centroids, points[index]])
        closest = torch.minimum(closest, torch.cdist(points, points[index]).squeeze(1) ** 2)
    return centroids
