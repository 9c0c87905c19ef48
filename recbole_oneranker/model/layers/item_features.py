"""Item side features (genres, category, brand, ...) as one vector per item.

Each feature is a table of value ids per item: one id (a token column, e.g. Taobao's category) or a 0-padded list
of ids (a token-sequence column, e.g. ml-100k's genres or Beauty's attributes). An item's vector is the sum over
features of the mean embedding of its values, so an item with more genres is not louder than one with a single
genre, and an item without a value of a feature gets nothing from it. Id 0 is padding in every table.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = ["ItemFeatureConfig", "ItemFeatureEmbedding"]


@dataclass(frozen=True)
class ItemFeatureConfig:
    """Sizes of an :class:`ItemFeatureEmbedding`.

    Attributes:
        hidden_size: ``D``.
        num_values: values per feature, padding id 0 included, by feature name.
    """

    hidden_size: int
    num_values: Mapping[str, int]

    def __post_init__(self) -> None:
        if not self.num_values:
            raise ValueError("ItemFeatureConfig needs at least one feature")
        for name, count in self.num_values.items():
            if count < 2:
                raise ValueError(f"feature '{name}' has {count} values: it needs the padding id 0 and at least one")


class ItemFeatureEmbedding(nn.Module):
    """``item ids -> [..., D]``: the sum over features of the mean embedding of each item's values.

    Args:
        config: the sizes.
        tables: by feature name, ``[n_items]`` (one value per item) or ``[n_items, L]`` (0-padded values) ids;
            the same names as ``config.num_values``. They are buffers, not parameters, and are not saved with the
            model: they come from the dataset each time the model is built.
    """

    def __init__(self, config: ItemFeatureConfig, tables: Mapping[str, Tensor]) -> None:
        super().__init__()
        if set(tables) != set(config.num_values):
            raise ValueError(f"tables for {sorted(tables)}, sizes for {sorted(config.num_values)}")
        self.config = config
        self.names = list(config.num_values)
        for index, name in enumerate(self.names):
            table = tables[name].long()
            table = table.unsqueeze(1) if table.dim() == 1 else table
            if table.numel() and int(table.max()) >= config.num_values[name]:
                raise ValueError(f"feature '{name}' has value id {int(table.max())} >= its {config.num_values[name]}")
            self.register_buffer(f"table_{index}", table, persistent=False)
        self.embeddings = nn.ModuleList(
            value_embedding(config.num_values[name], config.hidden_size) for name in self.names
        )

    def tables(self) -> list[Tensor]:
        """``[n_items, L_f]`` value ids of each feature, in ``self.names`` order."""
        return [getattr(self, f"table_{index}") for index in range(len(self.names))]

    def forward(self, item_ids: Tensor) -> Tensor:
        """``[...]`` item ids -> ``[..., D]`` feature vectors (zero for an item without any value, e.g. padding)."""
        total = torch.zeros((*item_ids.shape, self.config.hidden_size), device=item_ids.device)
        for table, embedding in zip(self.tables(), self.embeddings, strict=True):
            values = table[item_ids]  # [..., L]
            count = (values > 0).sum(-1, keepdim=True).clamp(min=1)
            total = total + embedding(values).sum(-2) / count  # padding rows are zero
        return total


def value_embedding(num_values: int, hidden_size: int) -> nn.Embedding:
    """A feature's table: rows drawn as the item embeddings are (std 0.02), the padding row 0 kept at zero."""
    embedding = nn.Embedding(num_values, hidden_size, padding_idx=0)
    nn.init.normal_(embedding.weight, std=0.02)
    with torch.no_grad():
        embedding.weight[0].zero_()
    return embedding
