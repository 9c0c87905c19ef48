"""Files a run writes and reads back: unwritable folders, truncated snapshots and interrupted writes are one line,
and never leave a truncated checkpoint behind."""

from __future__ import annotations

import errno
import os

import pytest

from recbole_oneranker import compat
from recbole_oneranker import trainer as trainer_module
from recbole_oneranker.cli import main
from recbole_oneranker.config import Config
from recbole_oneranker.data import create_dataset, data_preparation
from recbole_oneranker.errors import RunFileError
from recbole_oneranker.registry import get_model
from recbole_oneranker.trainer_lookup import get_trainer

TINY_ARGS = ["--epochs=1", "--hidden_size=8", "--n_layers=1", "--n_heads=1", "--state=ERROR", "--load_col=None"]


def _cli(tiny_config, *args: str) -> list[str]:
    return ["--model=SASRec", "--dataset=ml-tiny", f"--data_path={tiny_config['data_path']}", *TINY_ARGS, *args]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--checkpoint_dir=/proc/nope"], "checkpoint_dir: cannot create folder '/proc/nope'"),
        (["--log_dir=/proc/nope"], "log_dir: cannot create folder '/proc/nope/SASRec'"),
    ],
)
def test_an_unusable_output_folder_is_one_line(tiny_config, capsys, args, message):
    assert main(_cli(tiny_config, *args)) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message in err


def test_a_read_only_working_directory_is_one_line(tiny_config, capsys, monkeypatch):
    monkeypatch.chdir("/proc")  # read-only even for root
    assert main(_cli(tiny_config)) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "cannot create folder 'saved'" in err


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 truncated"])
def test_an_unreadable_resume_snapshot_names_the_file_and_how_to_start_clean(tiny_config, capsys, tmp_path, content):
    snapshot = tmp_path / "saved" / "cut-resume.pth"
    snapshot.parent.mkdir()
    snapshot.write_bytes(content)
    assert main(_cli(tiny_config, "--run_id=cut", "--resume_training=True", "--checkpoint_dir=saved")) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "saved/cut-resume.pth: the resume snapshot of run 'cut' cannot be read" in err
    assert "to start this run afresh, delete it: rm 'saved/cut-resume.pth'" in err


def _trainer(tiny_config):
    config = Config("SASRec", "ml-tiny", config_dict=tiny_config)
    train, _, _ = data_preparation(config, create_dataset(config))
    model = get_model("SASRec")(config, train._dataset)
    return get_trainer(config["MODEL_TYPE"], "SASRec")(config, model)


def _truncating_save(error: BaseException):
    """A ``torch.save`` that writes a few bytes to its target and then fails as a kill or a full disk would."""

    def save(state, path):
        with open(path, "wb") as handle:
            handle.write(b"PK\x03\x04")
        raise error

    return save


@pytest.mark.parametrize("error", [KeyboardInterrupt(), OSError(errno.ENOSPC, "No space left on device")])
def test_an_interrupted_checkpoint_write_keeps_the_previous_checkpoint(tiny_config, monkeypatch, tmp_path, error):
    trainer = _trainer(tiny_config)
    trainer._save_checkpoint(0, verbose=False)
    with monkeypatch.context() as patch, pytest.raises((KeyboardInterrupt, RunFileError)) as raised:
        patch.setattr(trainer_module.torch, "save", _truncating_save(error))
        trainer._save_checkpoint(1, verbose=False)
    if isinstance(error, OSError):
        assert f"{trainer.saved_model_file}: cannot write: No space left on device" in str(raised.value)
    assert compat.load_checkpoint(trainer.saved_model_file, "cpu")["epoch"] == 0
    assert [path.name for path in (tmp_path / "saved").iterdir()] == [os.path.basename(trainer.saved_model_file)]


def test_a_snapshot_whose_optimizer_state_no_longer_fits_the_parameters_names_the_file(tiny_config, tmp_path):
    config = Config("SASRec", "ml-tiny", config_dict=tiny_config)
    train, _, _ = data_preparation(config, create_dataset(config))
    trainer = get_trainer(config["MODEL_TYPE"], "SASRec")(config, get_model("SASRec")(config, train._dataset))
    trainer.model.calculate_loss(next(iter(train))).backward()
    trainer.optimizer.step()  # the optimizer now holds a state per parameter
    state = trainer._checkpoint_state(0)
    moments = state["optimizer"]["state"]
    shapes = [parameter.shape for parameter in trainer.model.parameters()]
    first, other = 0, next(i for i, shape in enumerate(shapes) if shape != shapes[0])
    moments[first], moments[other] = moments[other], moments[first]  # as if two parameters had swapped places
    trainer.resume_file = str(tmp_path / "cut-resume.pth")
    trainer_module.save_atomically(state, trainer.resume_file)
    with pytest.raises(RunFileError, match="cut-resume.pth: the resume snapshot .* the model has changed"):
        trainer._restore_snapshot(train, None)
