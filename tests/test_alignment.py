"""The preference-alignment stage: the DPO loss and its pairs, GPR's item log-probabilities, and ``stage: align`` end
to end on ml-tiny (GPR + DPO, OneRec + IPA over two iterations, GPR + HEPO, GPR and OneRec + ECPO) from tiny trained
checkpoints; the policy-gradient methods' wiring (advantages, critic, clip fractions, sampling) on the stage's own
models and batches."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from recbole_oneranker import config_rules
from recbole_oneranker.alignment import ALIGNMENT_METHODS, AlignmentTrainer, sampled_items
from recbole_oneranker.errors import ConfigError
from recbole_oneranker.model.layers import (
    clipped_surrogate,
    dpo_loss,
    group_advantages,
    preference_pairs,
    process_rewards,
    sample_without_replacement,
)
from recbole_oneranker.model.sequential_recommender import GPR
from recbole_oneranker.quick_start import run

GPR_TINY = {"hidden_size": 16, "attention_dim": 8, "linear_hidden_dim": 8, "n_heads": 2, "mtp_heads": 2,
            "num_thinking_tokens": 2, "beam_size": 8}  # fmt: skip
ONEREC_TINY = {"hidden_size": 16, "n_heads": 2, "encoder_layers": 1, "decoder_layers": 1, "encoder_inner_size": 16,
               "num_experts": 4, "expert_inner_size": 8, "session_length": 2, "decoder_positions": 2,
               "beam_size": 8}  # fmt: skip
REWARD_TINY = {"hidden_size": 16, "attention_dim": 8, "linear_hidden_dim": 8, "n_heads": 2, "decoder_heads": 2,
               "reward_negatives": 4}  # fmt: skip
# Every request of a batch gets a pair, so one epoch moves the policy.
STAGE_TINY = {"align_share": 1.0, "align_beam": 4, "align_learning_rate": 0.01, "hepo_critic_warmup": 2}


# -- the loss and the pairs -----------------------------------------------------------------------------------------


def test_dpo_loss_and_its_gradient_are_the_closed_form() -> None:
    beta = 0.5
    policy_chosen = torch.tensor([-1.0], requires_grad=True)
    policy_rejected, reference_chosen, reference_rejected = (
        torch.tensor([-2.0]),
        torch.tensor([-1.5]),
        torch.tensor([-1.0]),
    )
    loss = dpo_loss(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta)
    margin = beta * ((-1.0 - -1.5) - (-2.0 - -1.0))  # 0.75
    torch.testing.assert_close(loss, -torch.nn.functional.logsigmoid(torch.tensor([margin])))
    loss.sum().backward()
    torch.testing.assert_close(policy_chosen.grad, -beta * torch.sigmoid(torch.tensor([-margin])))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.integers(0, 5), min_size=4, max_size=4), min_size=1, max_size=6), st.data())
def test_chosen_and_rejected_follow_the_reward_order(reward_rows, data) -> None:
    rewards = torch.tensor(reward_rows, dtype=torch.float)
    valid = torch.tensor(data.draw(st.lists(st.lists(st.booleans(), min_size=4, max_size=4),
                                            min_size=len(reward_rows), max_size=len(reward_rows))))  # fmt: skip
    chosen, rejected, has_pair = preference_pairs(rewards, valid)
    for row in range(len(rewards)):
        kept = rewards[row][valid[row]]
        assert bool(has_pair[row]) == (len(kept) >= 2 and bool(kept.max() > kept.min()))
        if has_pair[row]:
            assert valid[row, chosen[row]] and valid[row, rejected[row]]
            assert rewards[row, chosen[row]] == kept.max() and rewards[row, rejected[row]] == kept.min()


def test_the_registry_and_the_config_rule_name_the_same_methods() -> None:
    (rule,) = [rule for rule in config_rules.RULES if rule.key == "align_method"]
    assert set(rule.check.choices) == set(ALIGNMENT_METHODS)


# -- GPR's item log-probabilities -----------------------------------------------------------------------------------


@pytest.fixture
def gpr(build_sid_model):
    model, _, test = build_sid_model(GPR, GPR_TINY, hte_weight=0.0)
    return model.eval(), next(iter(test))[0]


def test_gpr_item_log_probs_are_the_served_scores_and_a_distribution(gpr) -> None:
    model, batch = gpr
    items = torch.randint(1, model.n_items, (len(batch[model.ITEM_SEQ]), 6))
    with torch.no_grad():
        served = model.serve(batch).final_scores
        requests = model.encode_requests(batch)
        log_probs = model.item_log_probs(requests, items)
        catalogue = torch.arange(1, model.n_items).expand(len(items), -1)
        every_item = model.item_log_probs(requests, catalogue)
    torch.testing.assert_close(log_probs, served.gather(1, items))
    torch.testing.assert_close(every_item.exp().sum(1), torch.ones(len(items)))


def test_gpr_per_level_log_probs_sum_to_the_items(gpr) -> None:
    model, batch = gpr
    items = torch.randint(1, model.n_items, (len(batch[model.ITEM_SEQ]), 3))
    requests = model.encode_requests(batch)
    per_level = model.item_level_log_probs(requests, items)
    assert per_level.shape == (*items.shape, model.item_codes.shape[1])
    assert (per_level <= 1e-6).all()
    torch.testing.assert_close(per_level.sum(-1), model.item_log_probs(requests, items))
    per_level.sum().backward()  # differentiable
    assert model.generator.head_intents.weight.grad.abs().sum() > 0
    assert model.level_values(requests, items).shape == per_level.shape


def test_gpr_without_hte_has_no_level_values(build_sid_model) -> None:
    model, _, test = build_sid_model(GPR, GPR_TINY, use_hte=False)
    with pytest.raises(ConfigError, match="use_hte"):
        model.level_values(model.encode_requests(next(iter(test))[0]), torch.ones(1, 1, dtype=torch.long))


# -- the stage, end to end -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tiny_data_path, tmp_path_factory):
    """Tiny GPR, OneRec and RewardModel checkpoints on ml-tiny (one epoch each), and the settings they share."""
    from tests.conftest import TINY_CONFIG, write_tiny_sid_file

    folder = tmp_path_factory.mktemp("trained")
    sid_file = write_tiny_sid_file(tiny_data_path, folder / "ml-tiny.sid")
    common = {**TINY_CONFIG, "data_path": str(tiny_data_path), "load_col": None, "value_field": "rating",
              "cascade_fields": ["click", "conversion"], "checkpoint_dir": str(folder / "saved"),
              "log_dir": str(folder / "log")}  # fmt: skip
    checkpoints = {}
    sizes_of = {"GPR": {**GPR_TINY, "sid_file": str(sid_file)}, "OneRec": {**ONEREC_TINY, "sid_file": str(sid_file)},
                "RewardModel": REWARD_TINY}  # fmt: skip
    for model, sizes in sizes_of.items():
        checkpoints[model] = run(model, "ml-tiny", config_dict={**common, **sizes, "run_id": model})["saved_model_file"]
    stage = {key: common[key] for key in ("data_path", "checkpoint_dir", "log_dir", "state", "show_progress")}
    return checkpoints, stage


def _align(trained, model: str, **overrides) -> tuple[dict, AlignmentTrainer]:
    """Run the stage on ``model``'s checkpoint; returns the run's result and its trainer."""
    checkpoints, stage = trained
    trainers: list[AlignmentTrainer] = []
    original = AlignmentTrainer.__init__

    def keep(self, *args) -> None:
        original(self, *args)
        trainers.append(self)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(AlignmentTrainer, "__init__", keep)
        settings = {**stage, **STAGE_TINY, "stage": "align", "from_checkpoint": checkpoints[model],
                    "reward_checkpoint": checkpoints["RewardModel"], **overrides}  # fmt: skip
        result = run(model, "ml-tiny", config_dict=settings)
    return result, trainers[0]


def _weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in module.state_dict().items()}


def _assert_equal(weights: dict[str, torch.Tensor], module: torch.nn.Module) -> None:
    now = module.state_dict()
    assert weights.keys() == now.keys()
    assert all(torch.equal(weights[name], now[name]) for name in weights)


def test_gpr_dpo_moves_the_policy_only_and_reports_reward_beside_real_metrics(trained) -> None:
    from recbole_oneranker import compat

    start = compat.load_checkpoint(trained[0]["GPR"], "cpu")["state_dict"]
    reward_start = compat.load_checkpoint(trained[0]["RewardModel"], "cpu")["state_dict"]
    result, trainer = _align(trained, "GPR")
    assert trainer.method.name == "dpo" and trainer.stats.count > 0
    _assert_equal(start, trainer.reference)  # the reference is the starting checkpoint, frozen
    _assert_equal(reward_start, trainer.reward_model)
    assert not trainer.reference.training and not any(p.requires_grad for p in trainer.reference.parameters())
    assert not any(p.requires_grad for p in trainer.reward_model.parameters())
    aligned = compat.load_checkpoint(result["saved_model_file"], "cpu")["state_dict"]
    assert any(not torch.equal(aligned[name], start[name]) for name in start)
    assert "ndcg@10" in result["test_result"] and set(result["reward_result"]) == {"reward@10"}
    assert 0 < result["reward_result"]["reward@10"] < 5  # P(conversion) x a 1-5 rating


def test_onerec_ipa_two_iterations_refresh_the_reference(trained) -> None:
    ends: list[dict[str, torch.Tensor]] = []
    original = AlignmentTrainer.begin_iteration

    def record(self, iteration: int) -> None:
        ends.append(_weights(self.model))  # the policy at the end of the previous iteration
        original(self, iteration)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(AlignmentTrainer, "begin_iteration", record)
        result, trainer = _align(trained, "OneRec", align_iterations=2, align_epochs=1, stopping_step=5)
    assert trainer.method.name == "ipa" and trainer.iteration == 1 and len(ends) == 1
    _assert_equal(ends[0], trainer.reference)
    assert result["reward_result"]["reward@10"] > 0


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"reward_checkpoint": "GPR"}, "is a GPR on ml-tiny, not a RewardModel"),
        ({"align_method": "ipa"}, "align_method ipa aligns a OneRec, not a GPR"),
        ({"align_iterations": 2}, "align_method dpo has no iterations"),
        ({"epochs": 3}, "leave epochs out"),
        ({"from_checkpoint": "OneRec"}, "is a OneRec on ml-tiny, not a GPR on ml-tiny"),
        ({"repeat_explore": True}, "align a GPR without repeat_explore"),
        (
            {"align_method": "hepo", "hepo_process_weights": [0.1, 0.2, 0.3]},
            "hepo_process_weights needs one value or 2",
        ),
        ({"align_method": "hepo", "hepo_level_weights": [1.0, 1.0]}, "hepo_level_weights needs one value or 3"),
        ({"align_method": "ecpo", "align_clip": 1.5}, "'align_clip' must be a number in"),
    ],
)
def test_a_mismatched_stage_is_refused_in_one_line(trained, overrides, message) -> None:
    checkpoints, _ = trained
    overrides = {key: checkpoints.get(value, value) if key.endswith("checkpoint") else value
                 for key, value in overrides.items()}  # fmt: skip
    with pytest.raises(ConfigError, match=message):
        _align(trained, "GPR", **overrides)


def test_hepo_aligns_gpr_only(trained) -> None:
    with pytest.raises(ConfigError, match="align_method hepo aligns a GPR, not a OneRec"):
        _align(trained, "OneRec", align_method="hepo")


def test_stage_keys_outside_the_stage_are_refused(tiny_config) -> None:
    from recbole_oneranker.config import Config

    with pytest.raises(ConfigError, match="align_beta is a key of the alignment stage"):
        Config("GPR", "ml-tiny", config_dict={**tiny_config, "align_beta": 0.5})


def test_a_reward_model_of_other_items_is_refused(trained) -> None:
    _, stage = trained
    data = {"load_col": None, "cascade_fields": ["click", "conversion"], "value_field": "rating"}
    fewer_items = {**stage, **data, **REWARD_TINY, "run_id": "filtered", "item_inter_num_interval": "[2,inf)"}
    filtered = run("RewardModel", "ml-tiny", config_dict=fewer_items)
    with pytest.raises(ConfigError, match="reward_checkpoint .* knows .* items, the policy's data"):
        _align(trained, "GPR", reward_checkpoint=filtered["saved_model_file"])


def test_bench_writes_both_tables_with_commands_and_skips_finished_rows(trained, tiny_data_path, tmp_path) -> None:
    from recbole_oneranker.bench import align as align_bench

    checkpoints, _ = trained
    settings = [f"{key}={value}" for key, value in STAGE_TINY.items()]
    argv = ["--dataset", "ml-tiny", "--data-path", str(tiny_data_path), "--results", str(tmp_path),
            "--policy", f"GPR={checkpoints['GPR']}", f"OneRec={checkpoints['OneRec']}",
            "--reward", checkpoints["RewardModel"], "--set", *settings, "align_epochs=1"]  # fmt: skip
    assert align_bench.main(argv) == 0
    report = (tmp_path / "align-ml-tiny.md").read_text()
    for label in (
        "GPR pre-trained",
        "GPR +DPO",
        "GPR +HEPO",
        "GPR +DPO +HEPO",
        "GPR +ECPO",
        "GPR +VAFT",
        "GPR +VAFT +DPO",
        "GPR +VAFT +DPO +HEPO",
        "OneRec pre-trained",
        "OneRec +IPA 1 iteration",
        "OneRec +IPA 2 iterations",
        "OneRec +ECPO",
    ):
        assert f"| {label} |" in report
    assert "| GPR +DPO +HEPO | GPR +DPO |" in report  # HEPO from the DPO row's checkpoint
    assert "| GPR +VAFT +DPO +HEPO | GPR +VAFT +DPO |" in report  # GPR's Table 3 chain
    assert "run_recbole --model=GPR --dataset=ml-tiny --stage=finetune" in report
    assert "reward@10" in report and "run_recbole --model=OneRec --dataset=ml-tiny --stage=align" in report
    assert "WARNING" in report or "No row's reward estimate rose" in report
    rows = len((tmp_path / "align-ml-tiny.csv").read_text().splitlines())
    assert align_bench.main(argv) == 0  # every row done: skipped
    assert len((tmp_path / "align-ml-tiny.csv").read_text().splitlines()) == rows == 13


def test_a_killed_ipa_stage_resumes_with_its_reference_and_iteration(trained) -> None:
    from recbole_oneranker import compat

    resumable = {"align_iterations": 2, "align_epochs": 1, "run_id": "ipa-resume", "resume_training": True}

    def killed(self, iteration: int) -> None:
        raise KeyboardInterrupt  # after epoch 0's snapshot, before iteration 2 begins

    with pytest.MonkeyPatch.context() as patch, pytest.raises(KeyboardInterrupt):
        patch.setattr(AlignmentTrainer, "begin_iteration", killed)
        _align(trained, "OneRec", **resumable)
    snapshot = compat.load_checkpoint(f"{trained[1]['checkpoint_dir']}/ipa-resume-resume.pth", "cpu")
    assert snapshot["epoch"] == 0 and snapshot["iteration"] == 0
    start = compat.load_checkpoint(trained[0]["OneRec"], "cpu")["state_dict"]
    assert all(torch.equal(snapshot["reference_state_dict"][name], start[name]) for name in start)
    result, trainer = _align(trained, "OneRec", **resumable)
    assert trainer.iteration == 1 and result["reward_result"]
    _assert_equal(snapshot["state_dict"], trainer.reference)  # iteration 2's reference: the policy after epoch 0


# -- stage: finetune (GPR's VAFT after pre-training) ------------------------------------------------------------------


def _finetune(trained, **overrides) -> dict:
    checkpoints, stage = trained
    settings = {**stage, "stage": "finetune", "from_checkpoint": checkpoints["GPR"], "vaft": True, "epochs": 1}
    return run("GPR", "ml-tiny", config_dict={**settings, **overrides})


def test_finetune_starts_from_the_checkpoints_weights_under_its_settings(trained) -> None:
    from recbole_oneranker import compat
    from recbole_oneranker.trainer import Trainer

    start = compat.load_checkpoint(trained[0]["GPR"], "cpu")["state_dict"]
    at_fit: list[dict[str, torch.Tensor]] = []
    original = Trainer.fit

    def record(self, *args, **kwargs):
        at_fit.append(_weights(self.model))
        return original(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Trainer, "fit", record)
        result = _finetune(trained, run_id="finetune")
    assert at_fit[0].keys() == start.keys() and all(torch.equal(at_fit[0][name], start[name]) for name in start)
    saved = compat.load_checkpoint(result["saved_model_file"], "cpu")
    assert saved["config"]["hidden_size"] == GPR_TINY["hidden_size"]  # the checkpoint's shape, never passed here
    assert saved["config"]["vaft"] and saved["config"]["stage"] == "finetune"
    assert any(not torch.equal(saved["state_dict"][name], start[name]) for name in start)  # and it trained


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"stage": "train"}, "from_checkpoint is read by --stage=finetune"),
        ({"align_beta": 0.5}, "align_beta is a key of the alignment stage"),
        ({"from_checkpoint": None}, "stage: finetune needs from_checkpoint"),
    ],
)
def test_finetune_refuses_what_it_would_ignore(trained, overrides, message) -> None:
    with pytest.raises(ConfigError, match=message):
        _finetune(trained, **overrides)


# -- the policy-gradient methods: HEPO (GPR) and ECPO (GPR, OneRec) ---------------------------------------------------


def _align_keeping_batches(trained, model: str, **overrides) -> tuple[dict, AlignmentTrainer, list]:
    """:func:`_align`, also keeping the training batches the stage aligned on."""
    batches: list = []
    original = AlignmentTrainer.aligned_loss

    def keep(self, interaction):
        batches.append(interaction)
        return original(self, interaction)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(AlignmentTrainer, "aligned_loss", keep)
        result, trainer = _align(trained, model, **overrides)
    return result, trainer, batches


@pytest.fixture(scope="module")
def hepo(trained):
    return _align_keeping_batches(trained, "GPR", align_method="hepo", align_epochs=1)


@pytest.fixture(scope="module")
def ecpo(trained):
    return {model: _align_keeping_batches(trained, model, align_method="ecpo", align_epochs=1)
            for model in ("GPR", "OneRec")}  # fmt: skip


def _requests(trainer: AlignmentTrainer, batches: list):
    """Eight requests of the stage's first batch, as the stage samples them (the rows' whole histories)."""
    return batches[0][torch.arange(8)].to(trainer.device)


def test_gpr_hepo_trains_policy_and_hte_against_a_frozen_reference_and_reports_reward(trained, hepo) -> None:
    from recbole_oneranker import compat

    result, trainer, _ = hepo
    start = compat.load_checkpoint(trained[0]["GPR"], "cpu")["state_dict"]
    reward_start = compat.load_checkpoint(trained[0]["RewardModel"], "cpu")["state_dict"]
    assert trainer.method.name == "hepo" and trainer.stats.count > 0
    assert set(trainer.stats.means()) == {*trainer.method.statistics, "requests"}
    _assert_equal(start, trainer.reference)
    _assert_equal(reward_start, trainer.reward_model)
    aligned = compat.load_checkpoint(result["saved_model_file"], "cpu")["state_dict"]
    assert any(not torch.equal(aligned[name], start[name]) for name in start if name.startswith("generator."))
    assert any(not torch.equal(aligned[name], start[name]) for name in start if name.startswith("hte."))
    assert "ndcg@10" in result["test_result"] and set(result["reward_result"]) == {"reward@10"}


def test_hepos_warm_up_fits_the_critic_alone_once_before_the_first_epoch(trained) -> None:
    warm_ups: list[tuple[dict, dict]] = []
    original = AlignmentTrainer.warm_up

    def record(self, train_data) -> None:
        before = _weights(self.model)
        original(self, train_data)
        warm_ups.append((before, _weights(self.model)))

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(AlignmentTrainer, "warm_up", record)
        _align(trained, "GPR", align_method="hepo", align_iterations=2, align_epochs=1, hepo_critic_warmup=3)
    assert len(warm_ups) == 1
    before, after = warm_ups[0]
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed and all(name.startswith("hte.") for name in changed)


def test_hepo_advantages_are_eq_10_of_the_rollout_and_the_htes_values(hepo) -> None:
    _, trainer, batches = hepo
    method, policy, requests = trainer.method, trainer.model.eval(), _requests(trainer, batches)
    torch.manual_seed(0)
    rollout = method.rollout(trainer.reference, trainer.reward_model, requests)
    items = rollout.slates[..., 0]
    levels = policy.item_codes.shape[1]
    # the process rewards: code popularity among the positive (clicked: ml-tiny's first stage is not universal)
    # history entries, counted here by a loop
    history, clicks = requests[policy.ITEM_SEQ], requests["click_list"]
    codes = policy.item_codes[items]
    popularity = torch.zeros(codes.shape)
    for row in range(len(items)):
        positive = [int(item) for item, click in zip(history[row], clicks[row], strict=True) if item > 0 and click > 0]
        for k in range(items.shape[1]):
            for level in range(levels):
                same = sum(int(policy.item_codes[item, level] == codes[row, k, level]) for item in positive)
                popularity[row, k, level] = same / max(len(positive), 1)
    torch.testing.assert_close(rollout.process, process_rewards(popularity, codes, method.process_weights))
    assert rollout.process[..., :-1].gt(0).any()
    # no process reward, gamma = lambda = 1 and known values: A_l = R - V_l before the last level, A_L = the
    # group-normalised R
    rollout.process = torch.zeros_like(rollout.process)
    known = torch.linspace(-1.0, 1.0, items.numel() * levels).view(*items.shape, levels).requires_grad_()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(method, "gamma", 1.0)
        patch.setattr(method, "lam", 1.0)
        patch.setattr(policy, "level_values", lambda encoded, candidates: known)
        advantages, returns, values = method.advantages(policy, policy.encode_requests(requests), rollout)
    assert values is known
    terminal = rollout.rewards.unsqueeze(-1)
    torch.testing.assert_close(advantages[..., :-1], (terminal - known.detach())[..., :-1])
    torch.testing.assert_close(advantages[..., -1], group_advantages(rollout.rewards))
    torch.testing.assert_close(returns, terminal.expand_as(returns))


def test_hepo_loss_is_the_per_level_clipped_surrogate_plus_the_critic(hepo) -> None:
    _, trainer, batches = hepo
    method, policy, requests = trainer.method, trainer.model.eval(), _requests(trainer, batches)
    torch.manual_seed(0)
    rollout = method.rollout(trainer.reference, trainer.reward_model, requests)
    batch = method.objective(policy, requests, rollout)
    encoded = policy.encode_requests(requests)
    advantages, returns, values = method.advantages(policy, encoded, rollout)
    log_probs = policy.item_level_log_probs(encoded, rollout.slates[..., 0])
    surrogate = clipped_surrogate(log_probs, rollout.old_log_probs, advantages, method.clip).mean(1)
    expected = (surrogate * torch.tensor(method.level_weights)).sum(-1).mean()
    expected = expected + method.value_weight * (values - returns).pow(2).mean()
    torch.testing.assert_close(batch.loss, expected)
    assert batch.count == len(requests)
    assert 0 <= batch.sums["clip fraction"] <= batch.count


def test_hepos_critic_is_the_hte_on_a_stop_gradient_of_the_trunk(hepo) -> None:
    _, trainer, batches = hepo
    method, policy, requests = trainer.method, trainer.model.eval(), _requests(trainer, batches)
    torch.manual_seed(0)
    rollout = method.rollout(trainer.reference, trainer.reward_model, requests)
    policy.zero_grad()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(method, "level_weights", [0.0] * len(method.level_weights))  # the critic's term alone
        method.objective(policy, requests, rollout).loss.backward()
    grads = {name: p.grad for name, p in policy.named_parameters()}
    assert all(grad is None or not grad.any() for name, grad in grads.items() if not name.startswith("hte."))
    assert any(grad is not None and grad.any() for name, grad in grads.items() if name.startswith("hte."))
    policy.zero_grad()


def test_hepos_next_token_term_leaves_the_critic_to_the_returns(hepo) -> None:
    _, trainer, batches = hepo
    policy, interaction = trainer.model.eval(), batches[0]
    torch.manual_seed(0)
    (generation,) = trainer.method.next_token_loss(policy, interaction)
    torch.manual_seed(0)
    torch.testing.assert_close(generation, policy.calculate_loss(interaction)[0])  # GPR's generation loss alone
    policy.zero_grad()
    generation.backward()
    assert all(p.grad is None or not p.grad.any() for p in policy.hte.parameters())
    policy.zero_grad()


def test_hepo_refuses_a_gpr_checkpoint_without_hte(trained, tiny_data_path, tmp_path) -> None:
    from tests.conftest import TINY_CONFIG, write_tiny_sid_file

    sid_file = write_tiny_sid_file(tiny_data_path, tmp_path / "ml-tiny.sid")
    settings = {**TINY_CONFIG, **GPR_TINY, "data_path": str(tiny_data_path), "load_col": None, "value_field": "rating",
                "cascade_fields": ["click", "conversion"], "sid_file": str(sid_file), "use_hte": False,
                "run_id": "no-hte", "checkpoint_dir": str(tmp_path), "log_dir": str(tmp_path / "log")}  # fmt: skip
    without_hte = run("GPR", "ml-tiny", config_dict=settings)["saved_model_file"]
    with pytest.raises(ConfigError, match="align_method hepo: the critic is GPR's HTE: .* use_hte: True"):
        _align(trained, "GPR", align_method="hepo", from_checkpoint=without_hte)


@pytest.mark.parametrize("model", ["GPR", "OneRec"])
def test_ecpo_reports_reward_beside_real_metrics_and_keeps_the_reference(trained, ecpo, model) -> None:
    from recbole_oneranker import compat

    result, trainer, _ = ecpo[model]
    assert trainer.method.name == "ecpo" and trainer.stats.count > 0
    _assert_equal(compat.load_checkpoint(trained[0][model], "cpu")["state_dict"], trainer.reference)
    assert "ndcg@10" in result["test_result"] and result["reward_result"]["reward@10"] > 0


@pytest.mark.parametrize("model", ["GPR", "OneRec"])
def test_ecpo_clip_fraction_counts_the_negative_advantages_above_its_bound(ecpo, model) -> None:
    _, trainer, batches = ecpo[model]
    method, requests = trainer.method, _requests(trainer, batches)
    policy = trainer.model.eval()  # an epoch at lr 0.01 moved it: ratios spread on both sides of the bounds
    torch.manual_seed(0)
    rollout = method.rollout(trainer.reference, trainer.reward_model, requests)
    batch = method.objective(policy, requests, rollout)
    ratio = torch.exp(method.log_probs(policy, requests, rollout.slates).detach() - rollout.old_log_probs)
    advantages = group_advantages(rollout.rewards, valid=rollout.valid)
    capped = (advantages < 0) & (ratio > 1 + method.clip + method.early_clip) & rollout.valid
    expected = (capped.sum(1) / rollout.valid.sum(1).clamp(min=1)).sum()
    assert 0 < float(expected) < batch.count  # some entries are capped, not all
    assert batch.sums["early-clip fraction"] == pytest.approx(float(expected), abs=1e-5)


def test_sampling_without_replacement_follows_the_distribution_statistically() -> None:
    probs = torch.tensor([0.5, 0.25, 0.15, 0.1, 0.0])
    log_probs = probs.log().expand(20000, -1)
    drawn = sample_without_replacement(log_probs, 2, generator=torch.Generator().manual_seed(0))
    assert (drawn[:, 0] != drawn[:, 1]).all() and (drawn < 4).all()  # distinct, never the impossible item
    first = torch.bincount(drawn[:, 0], minlength=5).float() / len(drawn)
    torch.testing.assert_close(first, probs, atol=0.01, rtol=0)
    # Plackett-Luce: P(i among two draws) = p_i + sum_{j != i} p_j p_i / (1 - p_j)
    inclusion = torch.tensor([p + sum(q * p / (1 - q) for j, q in enumerate(probs[:4]) if j != i)
                              for i, p in enumerate(probs)])  # fmt: skip
    included = torch.bincount(drawn.flatten(), minlength=5).float() / len(drawn)
    torch.testing.assert_close(included, inclusion, atol=0.01, rtol=0)


def test_the_stage_samples_distinct_real_items_from_the_reference(hepo) -> None:
    _, trainer, batches = hepo
    requests = _requests(trainer, batches)
    items = sampled_items(trainer.reference, trainer.reference.encode_requests(requests), trainer.method.beam)
    assert items.shape == (len(requests), trainer.method.beam)
    assert (items > 0).all() and (items < trainer.reference.n_items).all()
    assert all(len(set(row.tolist())) == items.shape[1] for row in items)


def test_bench_without_a_path_starts_each_seed_from_its_own_checkpoint(tmp_path) -> None:
    from recbole_oneranker.bench import align as align_bench

    own = {seed: align_bench.pretrained_checkpoint("ml-100k", "GPR", seed, tmp_path) for seed in (2020, 2021)}
    for path in own.values():
        path.touch()
    reward = tmp_path / "reward.pth"
    reward.touch()
    args = align_bench.parse_args(["--policy", "GPR", "--seeds", "2", "--checkpoint-dir", str(tmp_path)])
    assert align_bench.policies(args) == {"GPR": own}
    assert len(set(own.values())) == 2 and all(f"seed{seed}" in path.name for seed, path in own.items())
    pinned = align_bench.parse_args(["--policy", f"GPR={reward}", "--seeds", "2", "--reward", str(reward)])
    assert align_bench.policies(pinned) == {"GPR": {2020: reward, 2021: reward}}
    assert align_bench.reward_checkpoints(pinned, None) == {2020: reward, 2021: reward}
    for seed in (2020, 2021):  # without --reward: each seed's own reward model (trained when missing)
        (tmp_path / f"reward-ml-100k-seed{seed}.pth").touch()
    assert align_bench.reward_checkpoints(args, None) == {
        seed: tmp_path / f"reward-ml-100k-seed{seed}.pth" for seed in (2020, 2021)
    }


def test_a_reward_model_cut_short_is_trained_on_not_taken_as_final(tmp_path, monkeypatch) -> None:
    from recbole_oneranker.bench import align as align_bench

    for seed in (2020, 2021):
        (tmp_path / f"reward-ml-100k-seed{seed}.pth").touch()  # the best so far, saved at every improvement
    (tmp_path / "reward-ml-100k-seed2021-resume.pth").touch()  # seed 2021's training was cut short
    trained: list[dict] = []

    def train(settings, dataset, negatives):
        trained.append(settings)
        return {"checkpoint": tmp_path / f"{settings['run_id']}.pth"}

    monkeypatch.setattr(align_bench.reward_bench, "train", train)
    args = align_bench.parse_args(["--policy", "GPR", "--seeds", "2", "--checkpoint-dir", str(tmp_path)])
    align_bench.reward_checkpoints(args, None)
    assert [(settings["run_id"], settings["resume_training"]) for settings in trained] == [
        ("reward-ml-100k-seed2021", True)
    ]
