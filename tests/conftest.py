"""Shared fixtures: a tiny multi-behaviour slice of the embedded ml-100k, and an isolated working folder."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest
import recbole
import torch
from hypothesis import settings
from recbole.data.interaction import Interaction, cat_interactions

from recbole_oneranker.data.sid import write_sid_file

# .ci/run sets HYPOTHESIS_PROFILE=ci: every property test then runs Hypothesis's fixed examples (derandomize), so a
# CI verdict does not depend on the draw (a subnormal advantage once failed a stop); local runs keep drawing new ones.
settings.register_profile("ci", derandomize=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

EMBEDDED_ML100K = Path(recbole.__file__).parent / "dataset_example" / "ml-100k" / "ml-100k.inter"
TINY_CONFIG = {
    # Tiny model and run settings: every end-to-end test trains for seconds, not minutes.
    "epochs": 1,
    "train_batch_size": 256,
    "eval_batch_size": 256,
    "hidden_size": 16,
    "inner_size": 32,
    "n_layers": 1,
    "n_heads": 1,
    "MAX_ITEM_LIST_LENGTH": 20,
    "show_progress": False,
    "state": "ERROR",
    "metrics": ["Hit", "NDCG", "GMV"],
    "topk": [5, 10],
    "valid_metric": "NDCG@10",
}


@pytest.fixture(autouse=True)
def isolated_cwd(tmp_path, monkeypatch):
    """Every test runs in its own folder, so RecBole's log/ and saved/ outputs never touch the repository."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="session")
def tiny_data_path(tmp_path_factory) -> Path:
    """``<data_path>/ml-tiny/ml-tiny.{inter,user}``: the first 60 users of ml-100k, with a cascade derived from the
    rating written as explicit 0/1 columns (click = rated >= 3, conversion = rated >= 4), the rating as value, and
    the users' age, gender, occupation and zip code."""
    inter = pd.read_csv(EMBEDDED_ML100K, sep="\t")
    inter.columns = [column.split(":")[0] for column in inter.columns]
    inter = inter[inter["user_id"] <= 60].copy()
    inter["click"] = (inter["rating"] >= 3).astype(float)
    inter["conversion"] = (inter["rating"] >= 4).astype(float)
    header = ["user_id:token", "item_id:token", "rating:float", "timestamp:float", "click:float", "conversion:float"]
    root = tmp_path_factory.mktemp("data")
    (root / "ml-tiny").mkdir()
    inter.to_csv(root / "ml-tiny" / "ml-tiny.inter", sep="\t", index=False, header=header)
    users = pd.read_csv(EMBEDDED_ML100K.with_suffix(".user"), sep="\t")
    users[users["user_id:token"] <= 60].to_csv(root / "ml-tiny" / "ml-tiny.user", sep="\t", index=False)
    return root


def items_in_batches(loader) -> list[int]:
    """The items a training loader's batches hold, as target or in history, padding left out, sorted: what a
    model's known-items mask (``items_held``) must hold, read the way the trainer sees the data."""
    held: set[int] = set()
    for batch in loader:
        held |= set(batch["item_id"].tolist()) | set(batch["item_id_list"].flatten().tolist())
    return sorted(held - {0})


def write_tiny_sid_file(data_path: Path, sid_file: Path) -> Path:
    """Write unique 3-level semantic IDs for every ml-tiny item under ``data_path`` to ``sid_file`` (4 x 4 codes,
    then a last level that tells apart the items sharing them)."""
    inter = pd.read_csv(data_path / "ml-tiny" / "ml-tiny.inter", sep="\t", dtype=str)
    items = list(inter["item_id:token"].unique())
    ids = torch.arange(len(items))
    write_sid_file(sid_file, items, torch.stack([ids % 4, (ids // 4) % 4, ids // 16], dim=1))
    return sid_file


@pytest.fixture
def tiny_sid_file(tiny_data_path, tmp_path) -> Path:
    """A SID file for every ml-tiny item (:func:`write_tiny_sid_file`), outside the shared data folder: models name
    it with ``sid_file``, and tests of a missing default file still find none."""
    return write_tiny_sid_file(tiny_data_path, tmp_path / "ml-tiny.sid")


@pytest.fixture
def build_sid_model(tiny_config, tiny_sid_file):
    """``build_sid_model(model_class, sizes, **overrides)`` -> ``(model, train, test)``: a model that reads semantic
    IDs (GPR, OneRec) at ``sizes``, built on ml-tiny with a SID file for every item, its weights drawn after
    ``torch.manual_seed(0)``."""
    from recbole.data import data_preparation

    from recbole_oneranker.config import Config
    from recbole_oneranker.data import create_dataset

    def make(model_class, sizes: dict, **overrides):
        settings = {**tiny_config, **sizes, "sid_file": str(tiny_sid_file), **overrides}
        config = Config(model_class.__name__, "ml-tiny", config_dict=settings)
        train, _, test = data_preparation(config, create_dataset(config))
        torch.manual_seed(0)
        return model_class(config, train._dataset), train, test

    return make


@pytest.fixture
def run_device() -> str:
    """How runs on this machine describe their device (RecBole trains on the GPU whenever torch sees one)."""
    from recbole_oneranker.trainer import describe_device

    return describe_device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture
def tiny_config(tiny_data_path) -> dict:
    """A config dict for the ml-tiny slice: cascade [click, conversion], value = rating."""
    return {
        **TINY_CONFIG,
        "data_path": str(tiny_data_path),
        "load_col": None,
        "cascade_fields": ["click", "conversion"],
        "value_field": "rating",
    }


@pytest.fixture
def assert_scoring_paths_agree():
    """``assert_scoring_paths_agree(model, batch)``: one batch through each path of ``NextItemSoftmax.sampled_logits``
    (gathered samples, then the whole catalogue) with the same negatives gives the same loss and gradients."""

    def loss_and_gradients(model, batch, whole_catalogue: bool):
        model.softmax.scores_whole_catalogue = lambda num_sampled: whole_catalogue
        model.zero_grad()
        torch.manual_seed(0)
        loss = model.calculate_loss(batch)
        loss = sum(loss) if isinstance(loss, tuple) else loss
        loss.backward()
        return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    def check(model, batch):
        model.eval()  # no dropout: the scoring path is the only difference
        reference_loss, reference_grads = loss_and_gradients(model, batch, whole_catalogue=False)
        fast_loss, fast_grads = loss_and_gradients(model, batch, whole_catalogue=True)
        torch.testing.assert_close(fast_loss, reference_loss)
        assert fast_grads.keys() == reference_grads.keys()
        for name, grad in reference_grads.items():
            torch.testing.assert_close(fast_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)

    return check


@pytest.fixture
def assert_length_buckets_change_nothing():
    """``assert_length_buckets_change_nothing(model, batch)``: an evaluation ``batch`` whose lengths vary, encoded by
    length bucket, gives the states of one pass padded to its longest, and scores that no bucket size changes."""

    def check(model, batch):
        model.eval()
        assert len(set(batch["item_length"].tolist())) > 1  # lengths vary, so buckets differ in padding
        with torch.no_grad():
            states = model.encode(batch)  # the reference: one pass, every row padded to the batch's longest
            scores = []
            for bucket_size in (0, 3, 16):
                model.length_bucket_size = bucket_size
                torch.testing.assert_close(model.encode_by_length(batch), states)
                scores.append((model.full_sort_predict(batch), model.predict(batch)))
        for bucketed in scores[1:]:
            torch.testing.assert_close(bucketed, scores[0])

    return check


@pytest.fixture
def assert_candidate_copies_encoded_once():
    """``assert_candidate_copies_encoded_once(model, batch)``: a batch laid out as RecBole's sampled evaluation lays
    it out (each row once per candidate item, the item and its label replaced) gets from ``predict`` the scores each
    copy gets on its own, with each history encoded once."""

    def check(model, batch):
        model.eval()
        generator = torch.Generator().manual_seed(0)

        def candidates(items: torch.Tensor, label: float) -> Interaction:
            # RecBole's layout: the user's row with the item replaced, labelled 1 for the target and 0 otherwise
            return Interaction({**batch.interaction, "item_id": items, "label": torch.full((len(batch),), label)})

        copies = [candidates(batch["item_id"], 1.0)] + [
            candidates(torch.randint(1, model.n_items, (len(batch),), generator=generator), 0.0) for _ in range(3)
        ]
        encoded_rows = []
        encode_by_length = model.encode_by_length

        def counting(interaction):
            encoded_rows.append(len(interaction))
            return encode_by_length(interaction)

        model.encode_by_length = counting
        try:
            with torch.no_grad():
                alone = torch.cat([model.predict(copy) for copy in copies])
                encoded_rows.clear()
                together = model.predict(cat_interactions(copies))
        finally:
            del model.encode_by_length
        torch.testing.assert_close(together, alone)
        assert encoded_rows == [len(batch)]

    return check
