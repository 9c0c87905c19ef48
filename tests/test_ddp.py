"""DDP: two gloo processes on the CPU train ml-tiny, and their evaluation equals one process's of the same checkpoint.

One spawn of two processes serves every check (starting processes costs more than training on ml-tiny): each
process works in its own folder, so what each one wrote can be told apart, and does what torchrun's processes do.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_CONFIG

from recbole_oneranker import distributed
from recbole_oneranker.checkpoints import load_data_and_model
from recbole_oneranker.config import Config
from recbole_oneranker.data import create_dataset, data_preparation
from recbole_oneranker.errors import ConfigError
from recbole_oneranker.quick_start import run
from recbole_oneranker.registry import get_model
from recbole_oneranker.trainer_lookup import get_trainer

MODELS = ("HSTU", "SASRec")  # this package's and RecBole's
RESUMED_EPOCHS = 2
USERS = 59
# Some of what OneRanker's training changes: a weight, and the Fake Item Tokens' k-means centroids (a buffer).
CHANGED = {"task_decoder.fake_centroids"}


class Interrupted(Exception):
    """Stands for a run killed after its first epoch's snapshot."""


def _interrupt_at_second_epoch(epoch: int, valid_score: float) -> None:
    if epoch == 1:  # the snapshot of epoch 0 is written; that of epoch 1 is not
        raise Interrupted


def _trained_states_agree(config_dict: dict) -> dict[str, bool]:
    """OneRanker (whole-sequence rows, length buckets, a k-means refresh of its Fake Item Tokens every epoch) trained
    for 2 epochs with the package's trainer: whether every rank ends with rank 0's parameters and buffers, and
    whether training changed them."""
    settings = {**config_dict, "epochs": 2, "fake_refresh_epochs": 1, "n_fake_items": 4, "length_bucket_size": 8}
    config = Config("OneRanker", "ml-tiny", config_dict=settings)
    train, valid, _ = data_preparation(config, create_dataset(config))
    model = get_model("OneRanker")(config, train._dataset)
    initial = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    trainer = get_trainer(config["MODEL_TYPE"], "OneRanker")(config, model)
    trainer.fit(train, valid, saved=False)
    states = distributed.gathered(model.state_dict())
    return {
        "equal": all(torch.equal(state[name], states[0][name]) for state in states for name in states[0]),
        "changed": {name for name in initial if not torch.equal(states[0][name], initial[name])} >= CHANGED,
    }


def _rank_worker(config_dict: dict, folder: str) -> dict:
    """One of the two processes (``distributed.spawn`` set torchrun's variables): the checks' runs, in its own
    folder."""
    own_folder = Path(folder) / f"rank{os.environ['RANK']}"
    own_folder.mkdir()
    os.chdir(own_folder)
    with distributed.process_group(torch.device("cpu")):
        outcome = {"oneranker": _trained_states_agree(config_dict)}
        for model in MODELS:
            outcome[model] = run(model, "ml-tiny", config_dict=config_dict)
        resumable = {**config_dict, "epochs": RESUMED_EPOCHS, "resume_training": True, "run_id": "resumed"}
        try:
            run("HSTU", "ml-tiny", config_dict=resumable, callback_fn=_interrupt_at_second_epoch)
        except Interrupted:
            outcome["snapshot_files"] = sorted(path.name for path in Path("saved").glob("resumed*"))
        outcome["resumed"] = run("HSTU", "ml-tiny", config_dict=resumable)
        outcome["uninterrupted"] = run("HSTU", "ml-tiny", config_dict={**config_dict, "epochs": RESUMED_EPOCHS})
    return outcome


@pytest.fixture(scope="module")
def ddp_outcome(tiny_data_path, tmp_path_factory) -> tuple[dict, Path]:
    """Rank 0's outcome of :func:`_rank_worker` in 2 gloo processes, and the folder holding each rank's folder."""
    folder = tmp_path_factory.mktemp("ddp")
    config_dict = {
        **TINY_CONFIG,
        "data_path": str(_odd_users(tiny_data_path, folder / "data")),
        "load_col": None,
        "value_field": "rating",
        "cascade_fields": ["click", "conversion"],
    }
    launch = distributed.Launch(nproc=2, world_size=2, offset=0, ip="localhost", port=distributed.free_port())
    return distributed.spawn(launch, _rank_worker, (config_dict, str(folder))), folder


def _odd_users(data_path: Path, root: Path) -> Path:
    """``root``, holding ml-tiny less its last user: 59 users, which 2 processes cannot share evenly, so that
    torch's ``DistributedSampler`` gives one user to both (the duplicate RecBole counted twice)."""
    (root / "ml-tiny").mkdir(parents=True)
    for suffix in ("inter", "user"):
        lines = (data_path / "ml-tiny" / f"ml-tiny.{suffix}").read_text().splitlines(keepends=True)
        kept = [line for line in lines[1:] if line.split("\t")[0] != str(USERS + 1)]
        (root / "ml-tiny" / f"ml-tiny.{suffix}").write_text(lines[0] + "".join(kept))
    return root


def _single_process_results(checkpoint: Path) -> tuple[dict, dict, np.ndarray]:
    """Valid and test metrics, and the test ranks, of ``checkpoint`` evaluated in this one process."""
    config, model, _, _, valid, test = load_data_and_model(checkpoint)
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    valid_result = trainer.evaluate(valid, load_best_model=False)
    test_result = trainer.evaluate(test, load_best_model=False)
    return valid_result, test_result, trainer.eval_collector.last_ranks


def test_ranks_end_training_with_equal_parameters(ddp_outcome):
    outcome, _ = ddp_outcome
    assert outcome["oneranker"] == {"equal": True, "changed": True}


@pytest.mark.parametrize("model", MODELS)
def test_ddp_evaluation_equals_one_process_of_the_same_checkpoint(ddp_outcome, model):
    outcome, folder = ddp_outcome
    result = outcome[model]
    valid_result, test_result, test_ranks = _single_process_results(folder / "rank0" / result["saved_model_file"])
    # Each user is evaluated once, in one process's order, from the same weights: the same numbers, not just close
    # ones (every user's scores depend on its row alone, and the metrics are computed from the same rows in the same
    # order).
    assert len(result["test_ranks"]) == USERS
    np.testing.assert_array_equal(result["test_ranks"], test_ranks)
    assert dict(result["best_valid_result"]) == dict(valid_result)
    assert dict(result["test_result"]) == dict(test_result)


def test_only_rank_0_writes_checkpoints_and_snapshots(ddp_outcome):
    outcome, folder = ddp_outcome
    assert outcome["snapshot_files"] == ["resumed-resume.pth", "resumed.pth"]
    assert sorted(path.name for path in (folder / "rank0" / "saved").iterdir()) == sorted(
        Path(outcome[name]["saved_model_file"]).name for name in (*MODELS, "resumed", "uninterrupted")
    )
    assert list((folder / "rank1" / "saved").iterdir()) == []


def test_a_resumed_ddp_run_ends_as_the_uninterrupted_one(ddp_outcome):
    outcome, _ = ddp_outcome
    resumed, uninterrupted = outcome["resumed"], outcome["uninterrupted"]
    np.testing.assert_array_equal(resumed["test_ranks"], uninterrupted["test_ranks"])
    assert resumed["test_result"] == uninterrupted["test_result"]
    assert resumed["best_valid_result"] == uninterrupted["best_valid_result"]


def test_unsupported_launches_fail_in_one_line(tiny_config, monkeypatch):
    with pytest.raises(ConfigError, match="callback_fn runs in the calling process"):
        run("SASRec", "ml-tiny", config_dict={**tiny_config, "nproc": 2}, callback_fn=lambda epoch, score: None)
    with pytest.raises(ConfigError, match="world_size .* must be at least nproc"):
        run("SASRec", "ml-tiny", config_dict={**tiny_config, "nproc": 2, "world_size": 1})
    with pytest.raises(ConfigError, match="needs --ip and --port"):
        run("SASRec", "ml-tiny", config_dict={**tiny_config, "nproc": 2, "world_size": 4})
    monkeypatch.setenv("WORLD_SIZE", "4")  # torchrun: 2 machines of 2 processes
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="leave --nproc out under torchrun"):
        run("SASRec", "ml-tiny", config_dict={**tiny_config, "nproc": 3})
