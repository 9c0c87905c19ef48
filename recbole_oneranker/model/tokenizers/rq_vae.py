"""Residual-quantised autoencoders: TIGER's RQ-VAE and GPR's RQ-KMeans+.

One module serves both. An encoder maps an item vector ``x`` to a latent ``z``; ``L`` codebooks quantise ``z``
residually (level ``l`` takes the nearest centroid to what levels ``< l`` left); a decoder maps the sum of the chosen
centroids back to ``x``. The loss is TIGER's: reconstruction MSE plus, per level, the codebook term
``||sg(r_l) - e_l||^2`` and the commitment term ``beta * ||r_l - sg(e_l)||^2``, with a straight-through gradient.

- **RQ-VAE** (TIGER): MLP encoder and decoder, codebooks initialised by k-means on the first batch's latents.
- **RQ-KMeans+** (GPR): residual encoder and decoder (``z = x + MLP(x)``, ``x_hat = z_q + MLP(z_q)``) whose last
  layers start at zero, and codebooks copied from RQ-KMeans on ``x``: the untrained model *is* that RQ-KMeans
  (same codes, same reconstruction), and training moves on from there instead of from a random start.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .residual_kmeans import Progress, ResidualCodes, nearest_codes, rq_kmeans


@dataclass(frozen=True)
class RQVAEConfig:
    """Sizes and training of a :class:`ResidualQuantizedAutoencoder`.

    Attributes:
        levels: ``L`` codebooks.
        codebook_size: ``K`` codes per codebook.
        latent_dim: width of ``z`` (ignored by the residual encoder, whose latent has the input's width).
        hidden_dim: width of the encoder's and decoder's hidden layer.
        commitment_weight: ``beta`` of the commitment term (TIGER: 0.25).
        epochs: passes over the items.
        batch_size: items per step (RQ-VAE's k-means initialisation takes ``max(batch_size, codebook_size)``).
        learning_rate: Adam's.
        seed: seeds the weights, the batches and the initial k-means.
    """

    levels: int = 3
    codebook_size: int = 256
    latent_dim: int = 32
    hidden_dim: int = 128
    commitment_weight: float = 0.25
    epochs: int = 50
    batch_size: int = 1024
    learning_rate: float = 1e-3
    seed: int = 0

    def __post_init__(self) -> None:
        if min(self.levels, self.codebook_size, self.latent_dim, self.hidden_dim, self.epochs, self.batch_size) < 1:
            raise ValueError(f"sizes must be positive: {self}")


@dataclass(frozen=True)
class RQVAEOutput:
    """One forward pass over ``N`` items.

    Attributes:
        codes: ``(N, L)`` int64.
        reconstruction: ``(N, D)``, the decoder's output.
        loss: scalar, ``reconstruction_loss + quantisation_loss``.
        reconstruction_loss: scalar MSE between input and reconstruction.
        quantisation_loss: scalar, summed over levels: codebook term + ``beta`` * commitment term.
    """

    codes: Tensor
    reconstruction: Tensor
    loss: Tensor
    reconstruction_loss: Tensor
    quantisation_loss: Tensor


def _mlp(input_dim: int, hidden_dim: int, output_dim: int, zero_last: bool) -> nn.Sequential:
    last = nn.Linear(hidden_dim, output_dim)
    if zero_last:  # the residual branch starts as the identity map
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
    return nn.Sequential(nn.Linear(input_dim, hidden_dim), nn.SiLU(), last)


class ResidualQuantizedAutoencoder(nn.Module):
    """Encoder, ``L`` residual codebooks, decoder (module docstring).

    Constructor Args:
        input_dim: ``D``.
        config: sizes and ``beta``.
        residual: GPR's residual encoder and decoder with zero-initialised last layers (latent width ``D``).

    Call Args:
        x: ``(N, D)``.

    Returns:
        :class:`RQVAEOutput`.

    Inputs are divided by the buffer ``input_scale`` (set to the items' mean vector norm by :func:`rq_vae` and
    :func:`rq_kmeans_plus_init`) and reconstructions multiplied back: the learning rate and the weights' initial
    scale then mean the same for every source. Unscaled, an HSTU item table (mean norm 0.16) collapsed RQ-VAE onto 3
    of 32 codes per level on ml-100k (99% collisions); scaled, it used all 32 (5% collisions). Losses and codebooks
    are in the scaled units.
    """

    input_scale: Tensor  # a buffer: () float

    def __init__(self, input_dim: int, config: RQVAEConfig, residual: bool) -> None:
        super().__init__()
        self._residual = residual
        self._commitment_weight = config.commitment_weight
        latent_dim = input_dim if residual else config.latent_dim
        self.encoder = _mlp(input_dim, config.hidden_dim, latent_dim, zero_last=residual)
        self.decoder = _mlp(latent_dim, config.hidden_dim, input_dim, zero_last=residual)
        self.codebooks = nn.Parameter(torch.zeros(config.levels, config.codebook_size, latent_dim))
        self.register_buffer("input_scale", torch.ones(()))

    def encode(self, x: Tensor) -> Tensor:
        """``(N, D) -> (N, D_latent)``, ``x`` already divided by ``input_scale``."""
        return x + self.encoder(x) if self._residual else self.encoder(x)

    def decode(self, quantised: Tensor) -> Tensor:
        """``(N, D_latent) -> (N, D)``, in the units of ``x / input_scale``."""
        return quantised + self.decoder(quantised) if self._residual else self.decoder(quantised)

    def quantise(self, latent: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Residual quantisation of ``latent`` (``(N, D_latent)``).

        Returns:
            ``(N, L)`` codes, ``(N, D_latent)`` quantised latent (straight-through: its gradient reaches
            ``latent``), and the scalar codebook + commitment loss summed over levels.
        """
        residual = latent
        chosen = []
        loss = latent.new_zeros(())
        for codebook in self.codebooks:
            codes = nearest_codes(residual.detach(), codebook.detach())
            centroid = codebook[codes]  # [N, D_latent]
            loss = loss + F.mse_loss(centroid, residual.detach())
            loss = loss + self._commitment_weight * F.mse_loss(residual, centroid.detach())
            residual = residual - centroid
            chosen.append(codes)
        quantised = latent - residual  # the sum of the chosen centroids
        straight_through = latent + (quantised - latent).detach()
        return torch.stack(chosen, dim=1), straight_through, loss

    def forward(self, x: Tensor) -> RQVAEOutput:
        scaled = x / self.input_scale
        codes, quantised, quantisation_loss = self.quantise(self.encode(scaled))
        reconstruction = self.decode(quantised)
        reconstruction_loss = F.mse_loss(reconstruction, scaled)
        return RQVAEOutput(
            codes,
            reconstruction * self.input_scale,
            reconstruction_loss + quantisation_loss,
            reconstruction_loss,
            quantisation_loss,
        )


def _mean_norm(vectors: Tensor) -> float:
    return float(vectors.norm(dim=1).mean().clamp(min=1e-12))


@dataclass(frozen=True)
class TrainedAutoencoder:
    """A trained :class:`ResidualQuantizedAutoencoder` (in eval mode) and its loss on all items before and after."""

    model: ResidualQuantizedAutoencoder
    loss_before: float
    loss_after: float


@torch.no_grad()
def _loss_on(model: ResidualQuantizedAutoencoder, vectors: Tensor) -> float:
    return float(model.eval()(vectors).loss)


def train_autoencoder(
    model: ResidualQuantizedAutoencoder, vectors: Tensor, config: RQVAEConfig, progress: Progress | None = None
) -> TrainedAutoencoder:
    """Adam on shuffled mini-batches of ``vectors`` (``(N, D)``) for ``config.epochs`` epochs.

    Returns:
        The model in eval mode, with its loss on all of ``vectors`` before and after training.
    """
    loss_before = _loss_on(model, vectors)
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    model.train()
    for epoch in range(config.epochs):
        total = 0.0
        for batch in torch.randperm(len(vectors), generator=generator).split(config.batch_size):
            loss = model(vectors[batch]).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
        if progress and (epoch + 1) % 10 == 0:
            progress(f"epoch {epoch + 1}/{config.epochs}: mean batch loss {total / len(vectors):.5f}")
    return TrainedAutoencoder(model, loss_before, _loss_on(model, vectors))


def rq_vae(vectors: Tensor, config: RQVAEConfig, progress: Progress | None = None) -> TrainedAutoencoder:
    """Train TIGER's RQ-VAE on ``vectors`` (``(N, D)``); its codebooks start from RQ-KMeans on the first batch's
    latents (TIGER's k-means initialisation)."""
    vectors = vectors.detach().float()
    with torch.random.fork_rng(devices=[]):  # weights drawn from the seed, the caller's random state untouched
        torch.manual_seed(config.seed)
        model = ResidualQuantizedAutoencoder(vectors.shape[1], config, residual=False)
    model.input_scale.fill_(_mean_norm(vectors))
    order = torch.randperm(len(vectors), generator=torch.Generator().manual_seed(config.seed))
    first_batch = order[: max(config.batch_size, config.codebook_size)]  # k-means needs K points at least
    with torch.no_grad():
        latents = model.encode(vectors[first_batch] / model.input_scale)
        model.codebooks.copy_(rq_kmeans(latents, config.levels, config.codebook_size, config.seed).codebooks)
    return train_autoencoder(model, vectors, config, progress)


def rq_kmeans_plus_init(
    vectors: Tensor, config: RQVAEConfig, progress: Progress | None = None
) -> tuple[ResidualQuantizedAutoencoder, ResidualCodes]:
    """GPR's RQ-KMeans+ before training: RQ-KMeans on ``vectors`` (``(N, D)``, divided by their mean norm) and the
    residual autoencoder holding its codebooks, whose forward pass gives exactly the RQ-KMeans codes and
    reconstruction. The RQ-KMeans result is returned in the vectors' own units."""
    vectors = vectors.detach().float()
    scale = _mean_norm(vectors)
    initial = rq_kmeans(vectors / scale, config.levels, config.codebook_size, config.seed, progress=progress)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = ResidualQuantizedAutoencoder(vectors.shape[1], config, residual=True)
    with torch.no_grad():
        model.codebooks.copy_(initial.codebooks)
        model.input_scale.fill_(scale)
    return model, ResidualCodes(initial.codes, initial.codebooks * scale)


def rq_kmeans_plus(vectors: Tensor, config: RQVAEConfig, progress: Progress | None = None) -> TrainedAutoencoder:
    """Train GPR's RQ-KMeans+ (:func:`rq_kmeans_plus_init`, then the RQ-VAE loss) on ``vectors`` (``(N, D)``)."""
    model, _ = rq_kmeans_plus_init(vectors, config, progress)
    return train_autoencoder(model, vectors.detach().float(), config, progress)
