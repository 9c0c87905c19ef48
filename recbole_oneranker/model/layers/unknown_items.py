"""One learned vector for the items a model never trained on, learned by id dropout.

Under leave-one-out, an item may first appear as a validation target: no training row holds it, so its id embedding
is still its random initialisation (or was only pushed down as a sampled negative). At test time it is the last item
of the user's history, and an id model reads that random vector as if it meant something. On the Taobao slice this is
the case for 9.3% of test histories (``python bench/diagnose.py repeats --dataset taobao``).

:class:`UnknownItems` replaces the embedding of every item outside a known set by one learned vector. The vector
learns through id dropout, as cold-start recommenders (DropoutNet) train for unseen ids: in training, a random share
of the known items is replaced as well, so the model learns what to do with an item it cannot recognise. Padding
(item 0) is never replaced.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = ["UnknownItems", "UnknownItemsConfig"]


@dataclass(frozen=True)
class UnknownItemsConfig:
    """Size and training of an :class:`UnknownItems`.

    Attributes:
        hidden_size: ``D``, the width of the embeddings it replaces.
        dropout: the share of known items also replaced in training; in ``(0, 1)``, since at 0 the vector would never
            learn.
        init_std: standard deviation of the vector's normal initialisation; 0 starts it at zero and draws no random
            number, so a model that adds the vector draws every other weight as it would without it.
    """

    hidden_size: int
    dropout: float
    init_std: float = 0.02

    def __post_init__(self) -> None:
        if self.hidden_size < 1:
            raise ValueError(f"hidden_size must be positive, got {self.hidden_size}")
        if not 0.0 < self.dropout < 1.0:
            raise ValueError(f"dropout must lie in (0, 1) for the unknown-item vector to learn, got {self.dropout}")
        if self.init_std < 0.0:
            raise ValueError(f"init_std must not be negative, got {self.init_std}")


class UnknownItems(nn.Module):
    """Replace the embeddings of unknown items (and, in training, of a random share of known ones) by one vector.

    Args:
        config: sizes and dropout.
        known: ``[num_items]`` bool, the items the model trained on (row 0, padding, is ignored).

    >>> sizes = UnknownItemsConfig(hidden_size=2, dropout=0.5, init_std=0.0)
    >>> layer = UnknownItems(sizes, known=torch.tensor([False, True, False])).eval()
    >>> layer(torch.ones(1, 3, 2), torch.tensor([[1, 2, 0]]))  # item 2 is unknown, 0 is padding
    tensor([[[1., 1.],
             [0., 0.],
             [1., 1.]]], grad_fn=<WhereBackward0>)
    """

    def __init__(self, config: UnknownItemsConfig, known: Tensor) -> None:
        super().__init__()
        if known.dim() != 1 or known.dtype != torch.bool:
            raise ValueError(f"known must be a 1-d bool mask over the item ids, got {known.dtype} {tuple(known.shape)}")
        self.config: UnknownItemsConfig = config
        size = config.hidden_size
        initial = torch.randn(size) * config.init_std if config.init_std else torch.zeros(size)
        self.vector: nn.Parameter = nn.Parameter(initial)
        self.known: Tensor
        self.register_buffer("known", known, persistent=False)  # rebuilt from the data, not saved

    def unknown(self, items: Tensor) -> Tensor:
        """``items``' shape, bool: the items replaced in this call (draws the training dropout)."""
        unknown = ~self.known[items]
        if self.training:
            unknown = unknown | (torch.rand(items.shape, device=items.device) < self.config.dropout)
        return unknown & (items != 0)

    def forward(self, embedded: Tensor, items: Tensor) -> Tensor:
        """``embedded`` (``[..., D]``, the embeddings of ``items``, ``[...]``) with the vector in place of the
        unknown items'."""
        replaced = self.unknown(items).unsqueeze(-1)
        return torch.where(replaced, self.vector.to(embedded.dtype), embedded)
