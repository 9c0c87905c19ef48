"""Each dataset config against its converted real data: cascades and values reach the model's batches."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_CONFIG
from recbole.data import data_preparation

from recbole_oneranker.config import Config, dataset_configs_dir
from recbole_oneranker.data import create_dataset
from recbole_oneranker.data.converters import convert_dataset
from recbole_oneranker.data.paths import raw_dataset_dir
from recbole_oneranker.quick_start import run

CASES = {
    # dataset name: (converter, raw folder, cascade, value field)
    "taobao": ("taobao-userbehavior", "taobao-userbehavior-subset", ["pv", "fav", "cart", "buy"], "value"),
    "obd": ("obd", "obd-small", ["impression", "click"], None),
    "taobao-ad": ("taobao-ad", "taobao-ad-sample", ["impression", "click"], "value"),
    "ali-ccp": ("ali-ccp", "ali-ccp-sample", ["impression", "click", "conversion"], None),
}


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """Convert the raw data of every case once; skip the cases whose raw folder is absent."""
    out = tmp_path_factory.mktemp("converted")
    done = set()
    for name, (converter, folder, _, _) in CASES.items():
        if raw_dataset_dir(folder).is_dir():
            convert_dataset(converter, out=out)
            done.add(name)
    return out, done


@pytest.mark.parametrize("name", sorted(CASES))
def test_config_matches_converted_data(converted, name):
    out, done = converted
    if name not in done:
        pytest.skip(f"raw data for {name} not found under {raw_dataset_dir(CASES[name][1])}")
    _, _, cascade, value_field = CASES[name]
    config = Config("SASRec", name, config_dict={"data_path": str(out), "state": "ERROR"})
    assert config["cascade_fields"] == cascade and config["value_field"] == value_field
    train, _, test = data_preparation(config, create_dataset(config))
    batch = next(iter(test))[0]
    for field in cascade + ([value_field] if value_field else []):
        assert field in batch and f"{field}_list" in batch, field
    labels = torch.stack([batch[field] for field in cascade], dim=-1)
    assert ((labels == 0) | (labels == 1)).all()
    # Cumulative cascades: a later stage implies every earlier one.
    assert (labels[:, 1:] <= labels[:, :-1]).all()


def test_taobao_ad_end_to_end_with_price_gmv(converted):
    out, done = converted
    if "taobao-ad" not in done:
        pytest.skip("raw taobao-ad sample not found")
    result = run("SASRec", "taobao-ad", config_dict={**TINY_CONFIG, "data_path": str(out)})
    assert "value = value: the ad's price (yuan)" in result["protocol"]
    assert 0.0 <= result["test_result"]["gmv@10"] <= 1.0


def test_every_dataset_config_key_is_documented():
    for path in dataset_configs_dir().glob("*.yaml"):
        for line in path.read_text().splitlines():
            top_level_key = line and not line.startswith((" ", "#")) and ":" in line
            if top_level_key and line.split(":")[0] not in {"load_col"}:
                assert "# (" in line, f"{path.name}: '{line}' has no '# (type) meaning' comment"
