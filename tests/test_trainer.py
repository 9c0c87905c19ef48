"""The trainer: safe checkpoints, best-model reload, seen-item masking, repeated evaluation with GMV."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from recbole.data import data_preparation
from recbole.model.layers import LightMultiHeadAttention

from recbole_oneranker.config import Config, ConfigError
from recbole_oneranker.data import create_dataset
from recbole_oneranker.registry import get_model
from recbole_oneranker.trainer import Trainer, compile_forward
from recbole_oneranker.trainer_lookup import get_trainer


def _setup(tiny_config, **overrides):
    config = Config("SASRec", "ml-tiny", config_dict={**tiny_config, **overrides})
    train, valid, test = data_preparation(config, create_dataset(config))
    model = get_model("SASRec")(config, train._dataset).to(config["device"])
    trainer = get_trainer(config["MODEL_TYPE"], "SASRec")(config, model)
    return config, trainer, train, valid, test


def test_checkpoint_is_weights_only_and_reloads(tiny_config):
    config, trainer, train, valid, test = _setup(tiny_config)
    trainer.fit(train, valid, saved=True)
    assert trainer.saved_model_file.endswith(f"{config['run_id']}.pth")
    checkpoint = torch.load(trainer.saved_model_file, weights_only=True)  # raises if anything is pickled code
    assert checkpoint["config"]["model"] == "SASRec" and isinstance(checkpoint["config"]["MODEL_TYPE"], str)

    best = {name: tensor.clone() for name, tensor in trainer.model.state_dict().items()}
    with torch.no_grad():
        for parameter in trainer.model.parameters():
            parameter.add_(1.0)
    first = trainer.evaluate(test, load_best_model=True)
    for name, tensor in trainer.model.state_dict().items():
        assert torch.equal(tensor, best[name]), name
    # A second evaluation sees the same users and values (the collector resets data.value between runs).
    assert trainer.evaluate(test, load_best_model=False) == first


def test_resume_checkpoint_restores_training_state(tiny_config):
    _, trainer, train, valid, _ = _setup(tiny_config)
    trainer.fit(train, valid, saved=True)
    _, resumed, _, _, _ = _setup(tiny_config)
    resumed.resume_checkpoint(trainer.saved_model_file)
    assert resumed.start_epoch == 1
    for name, tensor in resumed.model.state_dict().items():
        assert torch.equal(tensor, trainer.model.state_dict()[name]), name


def test_parallel_runs_get_distinct_checkpoints(tiny_config):
    first = _setup(tiny_config)[1].saved_model_file
    second = _setup(tiny_config)[1].saved_model_file
    assert first != second


def _first_batch_scores(trainer, test):
    trainer.model.eval()
    trainer.tot_item_num = test._dataset.item_num
    with torch.no_grad():
        interaction, scores, _, _ = trainer._full_sort_batch_eval(next(iter(test)))
    return interaction, scores


def test_mask_seen_items_removes_exactly_the_history(tiny_config):
    _, kept_trainer, _, _, test = _setup(tiny_config)
    _, masked_trainer, _, _, _ = _setup(tiny_config, mask_seen_items=True)
    masked_trainer.model.load_state_dict(kept_trainer.model.state_dict())

    interaction, kept = _first_batch_scores(kept_trainer, test)
    _, masked = _first_batch_scores(masked_trainer, test)
    history = interaction["item_id_list"].to(kept.device)  # scores are on the trainer's device, the batch is not
    seen = torch.zeros_like(kept, dtype=torch.bool).scatter_(1, history, True)
    seen[:, 0] = True  # padding item, -inf in both
    assert torch.isinf(masked[seen]).all() and (masked[seen] < 0).all()
    assert torch.equal(masked[~seen], kept[~seen])
    assert np.isfinite(kept[:, 1:].cpu().numpy()).all()


def test_candidate_set_protocol(tiny_config):
    from recbole_oneranker.quick_start import run

    result = run("SASRec", "ml-tiny", config_dict={**tiny_config, "candidate_negatives": 29})
    candidate = result["candidate_result"]
    hits = [candidate[f"hit@{k}"] for k in (1, 3, 5, 10, 15)]
    assert hits == sorted(hits) and all(0 <= h <= 1 for h in hits)
    # 30 candidates are far easier than the full catalogue: the same model hits more often.
    assert candidate["hit@10"] >= result["test_result"]["hit@10"]
    assert "candidate set: target + 29 uniform negatives" in result["protocol"]
    # The run's own metrics are untouched by the extra evaluation.
    assert set(result["test_result"]) == {"hit@5", "hit@10", "ndcg@5", "ndcg@10", "gmv@5", "gmv@10"}


def test_popularity_sampled_candidates_are_drawn_by_popularity(tiny_config):
    from recbole_oneranker.evaluator.protocol import Protocol
    from recbole_oneranker.quick_start import candidate_set_loader

    def draws(sampling):
        settings = {**tiny_config, "candidate_negatives": 9, "candidate_sampling": sampling}
        config = Config("SASRec", "ml-tiny", config_dict=settings)
        dataset = create_dataset(config)
        splits = [loader._dataset for loader in data_preparation(config, dataset)]
        candidate_config, loader = candidate_set_loader(config, dataset, splits, negatives=9)
        assert candidate_config["eval_args"]["mode"]["test"] == f"{sampling[:3]}9"
        np.random.seed(0)
        items = torch.cat([batch[0]["item_id"] for batch in loader])  # targets and negatives
        protocol = Protocol.of(config, dataset).render()
        return items, np.bincount(dataset.inter_feat["item_id"].numpy(), minlength=dataset.item_num), protocol

    (uniform, counts, uniform_protocol), (popular, _, popular_protocol) = draws("uniform"), draws("popularity")
    assert len(uniform) == len(popular)  # the same targets, each with 9 negatives
    # Popularity draws favour frequent items: their mean interaction count is well above the uniform draws'.
    assert counts[popular.numpy()].mean() > 1.5 * counts[uniform.numpy()].mean()
    assert "target + 9 uniform negatives" in uniform_protocol
    assert "target + 9 popularity-sampled negatives" in popular_protocol


def test_an_unknown_candidate_sampling_fails_before_training(tiny_config):
    from recbole_oneranker.quick_start import run

    with pytest.raises(ConfigError, match="'candidate_sampling' must be one of uniform, popularity, got 'pop'"):
        run("SASRec", "ml-tiny", config_dict={**tiny_config, "candidate_negatives": 9, "candidate_sampling": "pop"})


class _Interrupted(Exception):
    """Stands for the process being killed."""


class _ScoreLog:
    """A stateful ``callback_fn``: the validation scores so far; raises :class:`_Interrupted` at ``stop_at``."""

    def __init__(self, stop_at: int | None = None):
        self.scores: list[float] = []
        self.stop_at = stop_at
        self.calls = 0  # in this process only

    def __call__(self, epoch: int, score: float) -> None:
        self.calls += 1
        if epoch == self.stop_at:
            raise _Interrupted
        self.scores.append(score)

    def state_dict(self) -> dict:
        return {"scores": list(self.scores)}

    def load_state_dict(self, state: dict) -> None:
        self.scores = list(state["scores"])


def _resumable_run(tiny_config, run_id: str, callback):
    from recbole_oneranker.quick_start import run

    # HSTU draws from the torch generator (dropout, negatives) and the loader shuffles: a resume must restore both.
    settings = {**tiny_config, "epochs": 4, "stopping_step": 10, "run_id": run_id, "resume_training": True}
    return run("HSTU", "ml-tiny", config_dict=settings, callback_fn=callback)


def test_interrupted_run_resumes_to_the_uninterrupted_result(tiny_config):
    # On a GPU machine the snapshot loads onto the GPU: this also checks that the generators' states come back.
    whole_log = _ScoreLog()
    whole = _resumable_run(tiny_config, "whole", whole_log)

    with pytest.raises(_Interrupted):  # killed after epoch 1's validation, before its snapshot
        _resumable_run(tiny_config, "cut", _ScoreLog(stop_at=2))
    snapshot_file = os.path.join("saved", "cut-resume.pth")
    snapshot = torch.load(snapshot_file, weights_only=True)
    snapshot["devices"] = ["cuda: another machine's GPU"]  # as if the first process had run elsewhere
    torch.save(snapshot, snapshot_file)
    resumed_log = _ScoreLog()
    resumed = _resumable_run(tiny_config, "cut", resumed_log)

    assert resumed["device"] == f"cuda: another machine's GPU, then {whole['device']}"
    assert resumed_log.scores == whole_log.scores and len(whole_log.scores) == 4
    assert resumed["best_valid_result"] == whole["best_valid_result"]
    assert resumed["test_result"] == whole["test_result"]
    assert np.array_equal(resumed["test_ranks"], whole["test_ranks"])
    assert not os.path.exists(os.path.join("saved", "cut-resume.pth"))  # discarded once tested


@pytest.mark.parametrize("moved", [False, True], ids=["same-machine", "snapshot-moved-alone"])
def test_run_killed_after_training_only_tests_when_resumed(tiny_config, monkeypatch, moved):
    whole_log = _ScoreLog()
    whole = _resumable_run(tiny_config, "whole", whole_log)
    with monkeypatch.context() as patch:  # killed between training and testing: the snapshot stays
        patch.setattr(Trainer, "discard_snapshot", lambda self: None)
        _resumable_run(tiny_config, "cut", _ScoreLog())
    if moved:  # continued on another machine, where only the snapshot was copied: the best weights come from it
        os.remove(os.path.join("saved", "cut.pth"))
    resumed_log = _ScoreLog()
    resumed = _resumable_run(tiny_config, "cut", resumed_log)
    assert resumed_log.calls == 0 and resumed_log.scores == whole_log.scores  # no training, the state came back
    assert resumed["best_valid_result"] == whole["best_valid_result"]
    assert resumed["test_result"] == whole["test_result"]


def test_snapshot_without_its_best_checkpoint_is_a_clear_error(tiny_config, monkeypatch):
    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "discard_snapshot", lambda self: None)
        _resumable_run(tiny_config, "cut", _ScoreLog())
    snapshot_file = os.path.join("saved", "cut-resume.pth")
    snapshot = torch.load(snapshot_file, weights_only=True)
    del snapshot["best_checkpoint"]  # as an older version wrote it
    torch.save(snapshot, snapshot_file)
    os.remove(os.path.join("saved", "cut.pth"))
    with pytest.raises(FileNotFoundError, match="copy that file beside the snapshot"):
        _resumable_run(tiny_config, "cut", _ScoreLog())


def test_resume_training_needs_a_fixed_run_id(tiny_config):
    with pytest.raises(ConfigError, match="fixed run_id"):
        Config("HSTU", "ml-tiny", config_dict={**tiny_config, "resume_training": True})


@pytest.mark.parametrize("n_heads", [2, 1])  # one head needs compat fix 9
def test_compiled_model_computes_what_the_eager_one_does_and_saves_its_keys(tiny_config, n_heads):
    # Without dropout the two paths draw nothing at random, so scores, loss and gradients must agree.
    exact = {"hidden_dropout_prob": 0.0, "attn_dropout_prob": 0.0, "n_heads": n_heads}
    _, eager, _, _, test = _setup(tiny_config, **exact)
    _, compiled, train, _, _ = _setup(tiny_config, compile_model=True, **exact)
    assert "forward" in vars(compiled.model) and "forward" not in vars(eager.model)
    compiled.model.load_state_dict(eager.model.state_dict())
    graphs_before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    _, eager_scores = _first_batch_scores(eager, test)
    _, compiled_scores = _first_batch_scores(compiled, test)
    torch.testing.assert_close(compiled_scores, eager_scores, atol=1e-5, rtol=1e-5)
    batch = next(iter(train))
    for trainer in (eager, compiled):
        trainer.model.train()
        trainer.model.zero_grad()
        trainer.model.calculate_loss(batch.to(trainer.device)).backward()
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= graphs_before + 2  # inference and training
    compiled_parameters = dict(compiled.model.named_parameters())
    for name, eager_parameter in eager.model.named_parameters():
        torch.testing.assert_close(compiled_parameters[name].grad, eager_parameter.grad, atol=1e-5, rtol=1e-4)

    compiled._save_checkpoint(0, verbose=False)
    checkpoint = torch.load(compiled.saved_model_file, weights_only=True)
    assert checkpoint["state_dict"].keys() == eager.model.state_dict().keys()


def test_compiled_forward_keeps_the_softmax_axis_of_lightsans_attention():
    # LightSANs' attention takes its softmax over the second-to-last axis (compat fix 9).
    torch.manual_seed(0)
    layer = LightMultiHeadAttention(1, 4, 16, 20, 0.0, 0.0, 1e-12)  # heads, interests, width, length, dropouts, eps
    items, positions = 3 * torch.randn(8, 20, 16), torch.randn(20, 16)  # [B, L, D], [L, D]
    eager = layer(items, positions)
    compile_forward(layer)
    torch.testing.assert_close(layer(items, positions), eager, atol=1e-5, rtol=1e-5)


def test_compiling_a_new_model_frees_the_compile_cache_of_the_last_one():
    # A study worker compiles one model per trial, each with other constants: without a fresh cache its trials
    # exhaust Dynamo's recompile limit (8, by the 4th trial) and fall back to eager. Lowered to 1 here, the second
    # "trial" would already exceed it.
    torch.manual_seed(0)
    inputs = torch.randn(4, 8)
    with torch._dynamo.config.patch(recompile_limit=1, fail_on_recompile_limit_hit=True):
        for dropout in (0.1, 0.2):  # a guarded constant that differs between the two "trials"
            model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Dropout(dropout)).eval()
            eager = model(inputs)
            compile_forward(model)
            torch.testing.assert_close(model(inputs), eager)
