"""No code runs from a file the run did not ask for: RecBole's dataset and dataloader caches are never read."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from recbole_oneranker.errors import ConfigError
from recbole_oneranker.quick_start import run


class _WritesMarker:
    """Unpickling this object calls ``Path.touch`` on the marker: the stand-in for any code a pickle can run."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def _plant_caches(checkpoint_dir: Path, dataset: str, model: str, marker: Path) -> None:
    """Every cache file RecBole 1.2.1 unpickles when it exists: the dataset (per dataset class) and the loaders."""
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    names = [f"{dataset}-for-{model}-dataloader.pth"]
    names += [f"{dataset}-{cls}.pth" for cls in ("Dataset", "SequentialDataset", "KnowledgeBasedDataset")]
    for name in names:
        (checkpoint_dir / name).write_bytes(pickle.dumps(_WritesMarker(marker)))


@pytest.mark.parametrize("model", ["SASRec", "Pop"])
def test_planted_cache_pickles_never_run(tiny_config, tmp_path, model):
    marker = tmp_path / "payload-ran"
    _plant_caches(tmp_path / "saved", "ml-tiny", model, marker)
    config = {**tiny_config, "metrics": ["Hit", "NDCG"], "checkpoint_dir": str(tmp_path / "saved")}
    result = run(model, "ml-tiny", config_dict=config)
    assert not marker.exists()
    assert result["test_result"]


@pytest.mark.parametrize(
    "key, value", [("save_dataset", True), ("save_dataloaders", True), ("dataset_save_path", "ds.pth")]
)
def test_asking_for_a_pickle_cache_is_refused_in_one_line(tiny_config, key, value):
    with pytest.raises(ConfigError, match=f"'{key}' must be .*are pickles, which run code when read"):
        run("SASRec", "ml-tiny", config_dict={**tiny_config, key: value})
