"""Item vectors to quantise into semantic IDs, each keyed by item token.

Sources:

- **attributes**: the dataset's categorical item side features, embedded reproducibly: each item is a document of
  ``column=value`` words (TF-IDF weighted), reduced by a seeded truncated SVD and L2-normalised. Read from
  ``<name>.item`` (Beauty's attributes, ml-100k's genres, year and title), else from the ``.inter`` columns whose
  value does not change within an item (Taobao's category).
- **checkpoint**: a trained model's item embedding table (rows in the dataset's internal id order; the caller maps
  them to tokens, see ``recbole_oneranker.tokenize``).
- **file**: a user's own vectors: ``.npz`` holding ``ids`` and ``vectors``, or ``.npy`` plus a text file of ids
  (one per line), or a parquet table with an ``item_id`` column and one column per dimension.
- any of them **concatenated**.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.decomposition import TruncatedSVD
from sklearn.feature_extraction.text import TfidfVectorizer
from torch import Tensor

from recbole_oneranker.errors import ConfigError

ITEM_TABLE_SUFFIX = "item_embedding.weight"
CATEGORICAL_TYPES = ("token", "token_seq")
# An .inter column is an item feature when it never changes within this share of the items (Taobao: one item of
# 55,233 is logged under two categories).
ITEM_LEVEL_SHARE = 0.99


@dataclass(frozen=True)
class ItemVectors:
    """``N`` item tokens and their ``(N, D)`` float32 vectors."""

    tokens: list[str]
    vectors: Tensor


def _read_atomic(path: Path) -> pd.DataFrame:
    """A RecBole atomic file with its ``name:type`` header, every column as strings."""
    return pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)


def _categorical_columns(frame: pd.DataFrame, item_column: str) -> list[str]:
    return [c for c in frame.columns if c != item_column and c.partition(":")[2] in CATEGORICAL_TYPES]


def item_feature_table(data_dir: Path, dataset_name: str) -> pd.DataFrame:
    """One row per item token: ``item_id`` then its categorical side features (``name:type`` columns).

    From ``<name>.item`` when it exists, else from the ``<name>.inter`` columns constant within (nearly) every item,
    each item taking the value of its first row.
    Items of the ``.inter`` file missing from the ``.item`` file get empty features.
    """
    inter = _read_atomic(data_dir / f"{dataset_name}.inter")
    item_column = next(c for c in inter.columns if c.startswith("item_id:"))
    item_file = data_dir / f"{dataset_name}.item"
    if item_file.is_file():
        items = _read_atomic(item_file).drop_duplicates(item_column)
        columns = _categorical_columns(items, item_column)
    else:
        per_item = inter.groupby(item_column)
        columns = [
            c
            for c in _categorical_columns(inter, item_column)
            if c != "user_id:token" and (per_item[c].nunique() == 1).mean() >= ITEM_LEVEL_SHARE
        ]
        items = inter.drop_duplicates(item_column)  # an item's first row gives its value
    tokens = pd.DataFrame({item_column: pd.unique(pd.concat([items[item_column], inter[item_column]]))})
    table = tokens.merge(items[[item_column, *columns]], on=item_column, how="left").fillna("")
    return table.rename(columns={item_column: "item_id"})


def attribute_vectors(
    features: pd.DataFrame, columns: Sequence[str] | None = None, dim: int = 64, seed: int = 0
) -> ItemVectors:
    """TF-IDF + truncated SVD of the items' categorical features.

    Args:
        features: :func:`item_feature_table`'s output.
        columns: feature names to use (with or without their ``:type``); every categorical column when None.
        dim: SVD components (at most the number of distinct feature values - 1).
        seed: the SVD's ``random_state``.

    Returns:
        :class:`ItemVectors`, rows L2-normalised (an item without features is the zero vector).
    """
    available = {name.partition(":")[0]: name for name in features.columns if name != "item_id"}
    chosen = list(available) if columns is None else list(columns)
    unknown = [name for name in chosen if name.partition(":")[0] not in available]
    if unknown or not chosen:
        raise ConfigError(f"no item feature column {unknown or chosen}; the items have {sorted(available)}")
    documents = [""] * len(features)
    for name in chosen:
        field = name.partition(":")[0]
        words = features[available[field]].str.split()  # token_seq values are space-separated
        documents = [
            doc + " " + " ".join(f"{field}={w}" for w in row) for doc, row in zip(documents, words, strict=True)
        ]
    weights = TfidfVectorizer(analyzer=str.split, lowercase=False).fit_transform(documents)  # [N, vocabulary]
    components = min(dim, weights.shape[1] - 1)
    if components < 1:
        raise ConfigError(f"the item features {chosen} take a single value: nothing to embed")
    embedded = TruncatedSVD(n_components=components, random_state=seed).fit_transform(weights)
    embedded /= np.maximum(np.linalg.norm(embedded, axis=1, keepdims=True), 1e-12)
    return ItemVectors(features["item_id"].tolist(), torch.from_numpy(embedded).float())


def checkpoint_item_table(path: Path, key: str | None = None) -> Tensor:
    """The item embedding table of a checkpoint saved by this package (``torch.load(weights_only=True)``).

    Args:
        path: ``saved/<run_id>.pth``.
        key: the ``state_dict`` key; when None, the one key ending in ``item_embedding.weight`` (so a model whose
            table moved to e.g. ``encoder.item_embedding.weight`` still loads).

    Returns:
        ``(n_items, D)`` float32, row ``i`` the internal item id ``i`` (row 0 the padding item).
    """
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    if key is None:
        matches = [name for name in state if name.endswith(ITEM_TABLE_SUFFIX)]
        if len(matches) != 1:
            raise ConfigError(
                f"{path}: {len(matches)} keys end in '{ITEM_TABLE_SUFFIX}' ({', '.join(matches) or 'none'}); "
                f"name one with --checkpoint-key"
            )
        key = matches[0]
    if key not in state or state[key].dim() != 2:
        raise ConfigError(f"{path}: no 2-D tensor '{key}' in the checkpoint's state_dict")
    return state[key].float()


def file_vectors(path: Path, ids_path: Path | None = None) -> ItemVectors:
    """A user's own vectors keyed by item token (module docstring for the three layouts)."""
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as archive:
            if {"ids", "vectors"} - set(archive.files):
                raise ConfigError(f"{path}: an .npz of vectors needs arrays 'ids' and 'vectors', has {archive.files}")
            tokens, matrix = [str(token) for token in archive["ids"]], archive["vectors"]
    elif path.suffix == ".npy":
        if ids_path is None:
            raise ConfigError(f"{path}: an .npy of vectors needs its item ids (--ids FILE, one token per line)")
        matrix = np.load(path, allow_pickle=False)
        tokens = ids_path.read_text(encoding="utf-8").split()
    elif path.suffix == ".parquet":
        try:
            table = pd.read_parquet(path)
        except ImportError as error:
            raise ConfigError(f"{path}: reading parquet needs pyarrow or fastparquet ({error})") from error
        tokens, matrix = table.pop("item_id").astype(str).tolist(), table.to_numpy(dtype=np.float32)
    else:
        raise ConfigError(f"{path}: vectors must be .npz, .npy (+ --ids) or .parquet")
    if matrix.ndim != 2 or len(matrix) != len(tokens) or len(set(tokens)) != len(tokens):
        raise ConfigError(f"{path}: need one distinct id per row of a 2-D array, got {len(tokens)} ids, {matrix.shape}")
    return ItemVectors(tokens, torch.from_numpy(np.asarray(matrix, dtype=np.float32)))


def concatenate(parts: Sequence[ItemVectors]) -> ItemVectors:
    """The items every part has (in the first part's order), their vectors side by side.

    Each part is scaled to a mean row norm of 1 first, so no source outweighs the others by its scale alone.
    """
    common = set(parts[0].tokens).intersection(*(part.tokens for part in parts[1:]))
    tokens = [token for token in parts[0].tokens if token in common]
    if not tokens:
        raise ConfigError("the vector sources share no item")
    blocks = []
    for part in parts:
        row = {token: index for index, token in enumerate(part.tokens)}
        block = part.vectors[torch.tensor([row[token] for token in tokens])]
        blocks.append(block / block.norm(dim=1).mean().clamp(min=1e-12))
    return ItemVectors(tokens, torch.cat(blocks, dim=1))
