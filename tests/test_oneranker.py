"""OneRanker: tests that fail if a component were fake (masks, centroids, pass-through, DC direction, switches)."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from recbole.data import data_preparation

from recbole_oneranker.config import Config
from recbole_oneranker.data import create_dataset
from recbole_oneranker.data.converters import convert_dataset
from recbole_oneranker.data.paths import raw_dataset_dir
from recbole_oneranker.errors import ConfigError
from recbole_oneranker.model.layers import visible_states
from recbole_oneranker.model.sequential_recommender import OneRanker
from recbole_oneranker.model.sequential_recommender.oneranker import TrainingCandidates, force_targets, top_candidates
from recbole_oneranker.model.tokenizers import kmeans
from recbole_oneranker.quick_start import run
from tests.conftest import items_in_batches

ONERANKER_TINY = {
    "hidden_size": 16,
    "attention_dim": 8,
    "linear_hidden_dim": 8,
    "n_heads": 2,
    "num_negatives": 16,
    "n_fake_items": 4,
    "num_candidates": 6,
    "decoder_positions": 3,
}
RANKER_PARTS = ("ranker.", "rank_gate")
SID = {"generation": "sid", "mtp_heads": 2, "num_thinking_tokens": 2}  # step 1 generating semantic IDs
MODES = [pytest.param({}, id="item"), pytest.param(SID, id="sid")]
# Step 1 mixed with the copy of a history item: item generation's full softmax, or SID generation
REPEATS = [
    pytest.param({"repeat_explore": True, "loss_type": "full_softmax"}, id="item-repeat"),
    pytest.param({"repeat_explore": True}, id="item-sampled-repeat"),
    pytest.param({**SID, "repeat_explore": True}, id="sid-repeat"),
]


@pytest.fixture
def build(tiny_config, tiny_sid_file):
    """``build(**overrides) -> (model, train loader)`` on the ml-tiny slice (cascade click -> conversion, value);
    with ``generation="sid"``, on semantic IDs of every item (``tiny_sid_file``)."""

    def make(**overrides):
        if overrides.get("generation") == "sid":
            overrides = {"sid_file": str(tiny_sid_file), **overrides}
        config = Config("OneRanker", "ml-tiny", config_dict={**tiny_config, **ONERANKER_TINY, **overrides})
        train, _, test = data_preparation(config, create_dataset(config))
        torch.manual_seed(0)
        return OneRanker(config, train._dataset), train, test

    return make


def _loss(model, batch, seed=0):
    torch.manual_seed(seed)  # decoder positions and negatives are drawn: fix them
    return sum(model.calculate_loss(batch))


def _losses(model, batch, seed=0) -> dict[str, torch.Tensor]:
    """The weighted parts of the loss by name (with every step and the DC loss on)."""
    torch.manual_seed(seed)
    return dict(zip(("generation", "task", "rank", "dc"), model.calculate_loss(batch), strict=True))


def test_tasks_follow_the_cascade_then_value(build):
    model, _, _ = build()
    assert model.tasks == ["click", "conversion", "value"]
    assert build(task_order=["value", "click", "conversion"])[0].tasks == ["value", "click", "conversion"]
    with pytest.raises(ValueError, match="permutation"):
        build(task_order=["click", "value"])


def test_fake_items_are_kmeans_centroids_after_refresh(build):
    model, train, _ = build()
    with torch.no_grad():
        model.encoder.item_embedding.weight.normal_()  # training moved the items
    model.on_train_epoch_start(0)
    torch.testing.assert_close(model.task_decoder.fake_centroids, kmeans(model.item_vectors()[1:], 4, seed=0))
    frozen = build(fake_refresh_epochs=0)[0]
    before = frozen.task_decoder.fake_centroids.clone()
    with torch.no_grad():
        frozen.encoder.item_embedding.weight.normal_()
    frozen.on_train_epoch_start(0)
    assert torch.equal(frozen.task_decoder.fake_centroids, before)


def test_dual_channel_scores_match_the_two_channels_written_out(build):
    model, _, _ = build()
    n_tasks = len(model.tasks)
    tokens = torch.randn(5, n_tasks + model.n_fake_items, model.hidden_size)  # [P, T + F, D]
    items = model.item_vectors()  # [C, D], normalised
    task_vectors, fake_outputs = tokens[:, :n_tasks], tokens[:, n_tasks:]
    task_channel = torch.nn.functional.normalize(task_vectors, dim=-1) @ items.t()  # [P, T, C]
    preference = torch.softmax(task_vectors @ fake_outputs.transpose(1, 2) / model.hidden_size**0.5, dim=-1)
    centroid_similarity = torch.nn.functional.cosine_similarity(
        items[:, None], model.task_decoder.fake_centroids[None], dim=-1
    )
    expected = (task_channel + preference @ centroid_similarity.t()) / model.temperature  # [P, T, C]
    torch.testing.assert_close(model.task_scores(tokens, items), expected, rtol=1e-4, atol=1e-4)
    # Per-position items ([P, C', D]) score as the same items in the catalogue.
    ids = torch.randint(1, model.n_items, (5, 7))
    per_position = model.task_scores(tokens, items[ids])  # [P, T, 7]
    torch.testing.assert_close(per_position, expected.gather(2, ids.unsqueeze(1).expand(-1, n_tasks, -1)))


@pytest.mark.parametrize("bucket_size", [0, 4])
def test_hstu_encodes_each_row_once(build, bucket_size):
    model, train, _ = build(length_bucket_size=bucket_size)
    batch = next(iter(train))
    encoded_rows = []
    model.encoder.stack.register_forward_hook(lambda module, args, output: encoded_rows.append(len(args[0])))
    _loss(model, batch)
    assert sum(encoded_rows) == len(batch)  # steps 2 and 3 reuse the states: no second pass
    if bucket_size == 0:
        assert len(encoded_rows) == 1


@pytest.mark.parametrize("mode", MODES)
def test_dc_gradient_reaches_generator_not_ranker(build, mode):
    model, train, _ = build(alpha=0.0, beta=0.0, gamma=1.0, **mode)
    _loss(model, next(iter(train))).backward()
    for name, parameter in model.named_parameters():
        grad = parameter.grad
        if name.startswith(RANKER_PARTS):
            assert grad is None or grad.abs().sum() == 0, name
    # Step 2 enters the generator's score through its gate (0 at the start, so the gate is what moves first).
    generator = ["generator.head_intents.weight", "code_inputs.0.weight"] if mode else []
    for name in ("encoder.item_embedding.weight", "encoder.stack.blocks.0.uvqk", "task_gate", *generator):
        assert model.get_parameter(name).grad.abs().sum() > 0, name


def test_ranker_learns_only_from_sets_that_retrieved_their_target(build):
    model, train, _ = build()
    batch = next(iter(train))
    training_candidates = model.training_candidates

    def rank_loss(retrieved: bool | None):
        model.rank_forced_targets = retrieved is None

        def found_or_not(interaction, inputs):
            sets = training_candidates(interaction, inputs)
            return TrainingCandidates(sets.retrieval, sets.candidates, torch.full_like(sets.retrieved, bool(retrieved)))

        model.training_candidates = found_or_not
        return _losses(model, batch)["rank"]

    assert rank_loss(retrieved=False) == 0  # no set found its target: nothing to learn from
    torch.testing.assert_close(rank_loss(retrieved=True), rank_loss(retrieved=None))  # all found = all sets


def test_a_target_is_retrieved_iff_among_the_top_candidates():
    # Either way it ends up in the set, at the place of the last candidate when it was missed.
    retrieval = torch.tensor([[9.0, 1.0, 5.0, 3.0, 4.0, 2.0, 0.5, 0.2]]).expand(7, -1)  # item 0 = padding
    targets = torch.arange(1, 8)
    top = top_candidates(retrieval, 6)
    assert top[0].tolist() == [2, 4, 3, 5, 1, 6]
    candidates, retrieved = force_targets(top, targets)
    assert retrieved.tolist() == [True, True, True, True, True, True, False]
    assert (candidates == targets.unsqueeze(1)).any(dim=1).all()
    assert candidates[6].tolist() == [2, 4, 3, 5, 1, 7]


def test_decoders_without_backbone_gradients(build):
    # decoders_train_backbone: False: task and ranking losses train only the decoders; DC still trains the generator.
    model, train, _ = build(decoders_train_backbone=False)
    with torch.no_grad():
        model.rank_gate.fill_(0.5)  # at 0 the DC loss is exactly 0
    losses = _losses(model, next(iter(train)))
    (losses["task"] + losses["rank"]).backward(retain_graph=True)
    backbone = [name for name, _ in model.named_parameters() if name.startswith(("encoder.", "level_"))]
    for name in backbone:
        grad = model.get_parameter(name).grad
        assert grad is None or grad.abs().sum() == 0, name
    for name in (
        "task_decoder.decoder.layers.0.cross_attention.query.weight",
        "ranker.decoder.layers.0.self_qkv.weight",
        "task_decoder.task_tokens",
    ):
        assert model.get_parameter(name).grad.abs().sum() > 0, name
    losses["dc"].backward()
    for name in ("encoder.item_embedding.weight", "encoder.stack.blocks.0.uvqk"):
        assert model.get_parameter(name).grad.abs().sum() > 0, name


def test_decoders_with_backbone_gradients(build):
    # decoders_train_backbone: True (the paper's joint training): task and ranking losses reach the backbone too.
    model, train, _ = build(decoders_train_backbone=True)
    losses = _losses(model, next(iter(train)))
    (losses["task"] + losses["rank"]).backward()
    for name in ("encoder.item_embedding.weight", "encoder.stack.blocks.0.uvqk", "level_embedding.weight"):
        assert model.get_parameter(name).grad.abs().sum() > 0, name


def test_history_negatives_reach_the_generation_loss(build):
    model, train, _ = build(history_negatives=True)
    model.eval()  # no dropout: only the negatives differ
    batch = next(iter(train))
    torch.manual_seed(0)
    _, with_seen = model.encode_with_generation_loss(batch)
    model.softmax.config.history_negatives = False
    torch.manual_seed(0)
    _, without = model.encode_with_generation_loss(batch)
    assert with_seen > without


@pytest.mark.parametrize(
    "mode",
    [
        pytest.param({"n_gen_heads": 2}, id="item"),
        pytest.param(SID, id="sid"),
        pytest.param({**SID, "repeat_bias": True}, id="sid-repeat-bias"),
        # GPR's trunk: softmax attention and an FFN per token type (user tokens, items)
        pytest.param(
            {
                **SID,
                **{"attention": "softmax", "token_type_ffn": True, "bidirectional_prefix": True, "n_layers": 2},
                "user_token_fields": ["gender"],
            },
            id="sid-gpr-trunk",
        ),
        pytest.param({**SID, "item_id_embeddings": False}, id="sid-without-item-ids"),
        # the repeated target (below) trains the ranker's cross features where it is forced into a set
        pytest.param(
            {"candidate_history_features": True, "candidate_id_dropout": 0.5, "rank_forced_targets": True},
            id="candidate-history",
        ),
        *REPEATS,
    ],
)
def test_gradients_reach_every_parameter(build, mode):
    model, train, _ = build(**mode)
    batch = next(iter(train))
    if model.repeat_explore is not None or model.candidate_history is not None:
        # ml-tiny users never rate a movie twice: the copy attention and the cross features need a repeat
        batch["item_id"] = batch["item_id_list"][:, 0].clone()
    _loss(model, batch).backward()
    unread = ()  # with an FFN per token type, the last block's one of user tokens: no later block reads its output
    if model.encoder.config.hstu.num_token_types:
        last = model.encoder.config.hstu.num_blocks - 1
        unread = (f"encoder.stack.type_ffns.{last}.norms.0.", f"encoder.stack.type_ffns.{last}.ffns.0.")
    for name, parameter in model.named_parameters():
        if not name.startswith(unread):
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_whole_catalogue_scoring_matches_gathered_samples(build, assert_scoring_paths_agree):
    # Generation and task losses (scorers with a task dimension) through both paths of HSTU._sampled_logits.
    model, train, _ = build(n_gen_heads=2)
    assert_scoring_paths_agree(model, next(iter(train)))


SWITCHES = [
    {"gamma": 0.0},  # w/o DC loss
    {"inject_step2_kv": False},  # w/o step-2 injection into the ranker
    {"use_step2": False},  # ranker only
    {"use_ranker": False, "gamma": 0.0},  # step 2 only
    {"n_fake_items": 0},  # S2 w/o fake items
    {"task_decoupling": False},  # one shared task token
    {"cross_attention_first": False},  # w/o cross-attention prioritization
    {"heterogeneous_mask": False},  # w/o heterogeneous mask
    {"task_order": ["conversion", "click", "value"]},  # another task order
    {"attention": "softmax"},  # GPR's attention in step 1
    {"token_type_ffn": True},  # GPR's FFN per token type in step 1
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("switch", SWITCHES, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()))
def test_every_ablation_switch_changes_the_computation(build, switch, mode):
    reference, train, _ = build(loss_type="full_softmax", **mode)
    with torch.no_grad():  # as after some training: at 0 (their start) the gates make the DC loss exactly 0
        reference.rank_gate.fill_(0.5)
        reference.task_gate.fill_(0.5)
    variant, _, _ = build(loss_type="full_softmax", **mode, **switch)
    variant_state = variant.state_dict()
    shared = {
        k: v for k, v in reference.state_dict().items() if k in variant_state and v.shape == variant_state[k].shape
    }
    variant.load_state_dict(shared, strict=False)  # the same weights wherever both models have them
    reference.eval(), variant.eval()
    batch = next(iter(train))
    assert not torch.allclose(_loss(reference, batch), _loss(variant, batch))


def test_user_tokens_are_read_before_the_history(build):
    model, train, _ = build(user_token_fields=["gender", "occupation"])
    model.eval()
    batch = next(iter(train))
    with torch.no_grad():
        before = model.encode(batch)
        model.user_token_embeddings["occupation"].weight.normal_()
        after = model.encode(batch)
    real = torch.arange(before.shape[1]) < batch["item_length"].unsqueeze(1)
    assert not torch.allclose(after[real], before[real])  # every history state reads the user tokens
    with pytest.raises(ConfigError, match="'rating' is not a token column"):
        build(user_token_fields=["rating"])


def test_repeat_bias_is_learned_and_keeps_seen_items_out_of_the_candidates(build):
    model, train, test = build(repeat_bias=True, history_negatives=True)
    sum(model.calculate_loss(next(iter(train)))).backward()
    assert model.repeat_shift.shift.grad.abs() > 0
    model.eval()
    batch = next(iter(test))[0]
    seen = torch.zeros(len(batch), model.n_items, dtype=torch.bool).scatter_(1, batch["item_id_list"], True)
    seen[:, 0] = False
    with torch.no_grad():
        model.repeat_shift.shift.fill_(-3.0)  # below any cosine: seen items sink to the bottom of retrieval
        top = model.full_sort_predict(batch).topk(model.num_candidates, dim=1).indices
    assert not seen.gather(1, top).any()


@pytest.mark.parametrize(
    "overrides", [{}, {"repeat_bias": True, "history_negatives": True}, SID, {**SID, "repeat_bias": True}, *REPEATS]
)
def test_full_sort_puts_ranked_candidates_first(build, overrides):
    model, _, test = build(**overrides)
    model.eval()
    batch = next(iter(test))[0]
    with torch.no_grad():
        if model.repeat_shift is not None:
            model.repeat_shift.shift.fill_(-0.2)
        if model.repeat_explore is not None:  # an even mixture: both parts decide the order
            model.repeat_explore.gate.bias.fill_(0.0)
        served = model.serve(batch)
        scores, candidates = served.final_scores, served.candidates
        torch.testing.assert_close(scores, model.full_sort_predict(batch))
        assert torch.equal(candidates, top_candidates(served.retrieval_scores, model.num_candidates))
        pointwise = []
        for column in candidates.t():
            batch["item_id"] = column
            pointwise.append(model.predict(batch))
        pointwise = torch.stack(pointwise, dim=1)
    top = scores.topk(model.num_candidates, dim=1).indices
    assert torch.equal(top.sort(dim=1).values, candidates.sort(dim=1).values)  # the candidates come first...
    lifted = scores.gather(1, candidates) - pointwise  # ...in the ranker's order (a constant lift per row)
    torch.testing.assert_close(lifted, lifted[:, :1].expand_as(lifted))


@pytest.mark.parametrize("unknown_ids", [{}, {"candidate_id_dropout": 0.2}], ids=["ids", "unknown-ids"])
def test_candidate_history_moves_only_the_seen_candidates_alike_in_full_sort_and_predict(build, unknown_ids):
    model, _, test = build(candidate_history_features=True, **unknown_ids)
    model.eval()
    batch = next(iter(test))[0]
    with torch.no_grad():
        model.rank_gate.fill_(0.5)  # the ranker's score counts in the served order
        served = model.serve(batch)
        pointwise = []
        for column in served.candidates.t():
            batch["item_id"] = column
            pointwise.append(model.predict(batch))
        lifted = served.final_scores.gather(1, served.candidates) - torch.stack(pointwise, dim=1)
        torch.testing.assert_close(lifted, lifted[:, :1].expand_as(lifted))  # both paths read the same features
        seen = (served.candidates.unsqueeze(-1) == batch["item_id_list"].unsqueeze(1)).any(-1)  # [B, N]
        assert seen.any() and (~seen).any()
        for table in (model.candidate_history.count, model.candidate_history.recency, model.candidate_history.level):
            table.weight[1:].normal_()  # row 0, "never seen", stays zero
        after = model.serve(batch).ranker_scores
    assert torch.equal(~torch.isclose(after, served.ranker_scores), seen)


def test_candidates_no_training_row_holds_enter_the_ranker_as_one_unknown_item(build):
    model, train, _ = build(candidate_id_dropout=0.2)
    assert model.unknown_candidates.known.nonzero().flatten().tolist() == items_in_batches(train)
    model.eval()  # no id dropout: only the items no training row holds are unknown
    batch = next(iter(train))
    trained = model.unknown_candidates.known.nonzero().flatten()[:2]
    with torch.no_grad():
        states, _ = model.encode_with_generation_loss(batch)
        inputs = model.decoder_inputs(batch, states)
        candidates = trained.expand(*inputs.positions.shape, -1)  # [B, R, 2]
        known = model.rank(inputs, candidates)
        torch.testing.assert_close(model.rank(inputs, candidates), known)  # nothing is drawn in evaluation
        model.unknown_candidates.known[trained] = False  # as if no training row held them
        unknown = model.rank(inputs, candidates)
    assert not torch.allclose(known[:, 0], known[:, 1])  # two ids, two tokens
    torch.testing.assert_close(unknown[:, 0], unknown[:, 1])  # one unknown-item token for both


@pytest.mark.parametrize(
    "overrides",
    [{}, {"use_ranker": False, "gamma": 0.0, "n_gen_heads": 2}, SID, {**SID, "item_id_embeddings": False}],
)
def test_oneranker_end_to_end_on_ml_tiny(tiny_config, tiny_sid_file, overrides):
    settings = {**tiny_config, **ONERANKER_TINY, **overrides, "epochs": 2, "sid_file": str(tiny_sid_file)}
    result = run("OneRanker", "ml-tiny", config_dict=settings)
    assert set(result["test_result"]) >= {"hit@10", "ndcg@10", "gmv@10"}


@pytest.fixture(scope="module")
def taobao_slice(tmp_path_factory):
    """The Taobao funnel's first 60 users, converted from the real raw file (dataset name ``taobao``)."""
    if not raw_dataset_dir("taobao-userbehavior-subset").is_dir():
        pytest.skip(f"raw Taobao UserBehavior not found under {raw_dataset_dir('taobao-userbehavior-subset')}")
    out = tmp_path_factory.mktemp("taobao")
    convert_dataset("taobao-userbehavior", out=out)
    inter_file = out / "taobao" / "taobao.inter"
    inter = pd.read_csv(inter_file, sep="\t", dtype=str)
    keep = inter["user_id:token"].drop_duplicates().head(60)
    inter[inter["user_id:token"].isin(keep)].to_csv(inter_file, sep="\t", index=False)
    return out


@pytest.mark.parametrize("overrides", [{}, {"candidate_history_features": True}])
def test_oneranker_end_to_end_on_taobao_funnel(tiny_config, taobao_slice, overrides):
    settings = {**tiny_config, **ONERANKER_TINY, **overrides, "data_path": str(taobao_slice), "epochs": 1}
    for key in ("load_col", "cascade_fields", "value_field"):
        settings.pop(key)  # the taobao dataset config declares them: pv -> fav -> cart -> buy, value = stage
    settings.update(item_inter_num_interval="[1,inf)")
    result = run("OneRanker", "taobao", config_dict=settings)
    assert "funnel stage" in result["protocol"]
    assert 0.0 <= result["test_result"]["gmv@10"] <= 1.0


@pytest.mark.parametrize("mode", MODES)
def test_length_buckets_do_not_change_the_states_or_the_scores(build, assert_length_buckets_change_nothing, mode):
    model, _, test = build(repeat_bias=True, history_negatives=True, **mode)
    torch.nn.init.constant_(model.repeat_shift.shift, -0.2)
    assert_length_buckets_change_nothing(model, next(iter(test))[0])


@pytest.mark.parametrize("mode", [*MODES, pytest.param({"candidate_history_features": True}, id="candidate-history")])
def test_sampled_evaluation_encodes_each_history_once(build, assert_candidate_copies_encoded_once, mode):
    model, _, test = build(repeat_bias=True, history_negatives=True, **mode)
    torch.nn.init.constant_(model.repeat_shift.shift, -0.2)
    torch.nn.init.constant_(model.rank_gate, 0.5)  # the ranker's score counts in predict
    assert_candidate_copies_encoded_once(model, next(iter(test))[0])


def test_a_checkpoint_saved_before_the_reshaping_still_loads(build):
    model, _, _ = build(repeat_bias=True, history_negatives=True)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter))
    state = model.state_dict()
    legacy = {}
    for key, value in state.items():  # the names the parameters had before the model was split into parts
        for old, new in reversed(OneRanker.LEGACY_KEYS):
            if key == new or (new.endswith(".") and key.startswith(new)):
                key = old + key.removeprefix(new)
                break
        legacy[key] = value
    assert "item_embedding.weight" in legacy and "ranker.layers.0.self_qkv.weight" in legacy
    fresh, _, _ = build(repeat_bias=True, history_negatives=True)
    fresh.load_state_dict(legacy)
    for key, value in state.items():
        torch.testing.assert_close(fresh.state_dict()[key], value, msg=key)


def test_a_checkpoint_saved_before_the_unknown_candidate_vector_moved_into_its_layer_still_loads(build):
    model, _, _ = build(candidate_id_dropout=0.2)
    state = model.state_dict()
    state["unknown_candidate"] = state.pop("unknown_candidates.vector") + 1.0  # the name it was saved under
    fresh, _, _ = build(candidate_id_dropout=0.2)
    fresh.load_state_dict(state)
    torch.testing.assert_close(fresh.unknown_candidates.vector, state["unknown_candidate"])


# -- generation: sid (step 1 generates semantic-ID paths, as the paper's GPR-based step 1) ----------------------------


def test_sid_retrieval_is_the_heads_mixture_of_exact_item_log_probs(build):
    model, _, test = build(**SID)
    model.eval()
    batch = next(iter(test))[0]
    with torch.no_grad():
        served = model.serve(batch)  # the task gate starts at 0: retrieval is step 1's score alone
        states = model.encode_by_length(batch)
        lengths = batch["item_length"]
        intents = model.generator.intents(states, visible_states(states.shape[1], (lengths - 1)[:, None], lengths))
        _, structure = model.semantic_ids_on(states.device)
        per_head = model.generator.catalogue_log_probs(intents[:, 0], structure)  # [B, H, n_items - 1]
    mixture = torch.logsumexp(per_head, dim=1) - math.log(SID["mtp_heads"])
    torch.testing.assert_close(served.retrieval_scores[:, 1:], mixture)
    assert torch.allclose(mixture.exp().sum(1), torch.ones(len(batch)))  # a distribution over the catalogue


def test_sid_tokens_carry_the_items_codes_into_history_and_candidates(build):
    model, train, _ = build(**SID)
    model.eval()
    batch = next(iter(train))
    with torch.no_grad():
        states, _ = model.encode_with_generation_loss(batch)
        torch.manual_seed(0)
        inputs = model.decoder_inputs(batch, states)  # the ranker's memory, fixed from here on
        candidates = torch.randint(1, model.n_items, (*inputs.positions.shape, 4))
        before = model.rank(inputs, candidates)
        model.code_inputs[1].weight.normal_()
        after = model.rank(inputs, candidates)  # the same memory: only the candidates' tokens changed
        assert not torch.allclose(before, after)
        assert not torch.allclose(model.encode(batch), states)  # the history tokens read the codes too


SID_REPEAT_BIAS = {**SID, "repeat_bias": True, "use_step2": False, "use_ranker": False, "gamma": 0.0}


def test_sid_repeat_shift_loss_is_the_served_targets_log_prob_change(build):
    # Step 1 alone, so the served score is the SID mixture's; the shift needs no history negatives in this mode
    model, train, _ = build(**SID_REPEAT_BIAS)
    model.eval()  # no dropout: training and serving read the same intents
    batch = next(iter(train))
    batch["item_id"][::2] = batch["item_id_list"][::2, 0]  # half the targets repeat a seen item
    targets = batch["item_id"][:, None]
    with torch.no_grad():
        plain = model.full_sort_predict(batch)  # the shift at 0: log-probabilities
        _, loss_without = model.encode_with_generation_loss(batch)
        model.repeat_shift.shift.fill_(-1.5)
        shifted = model.full_sort_predict(batch)
    served_change = model.repeat_shift.normalised(plain, batch["item_id_list"]).gather(1, targets) - plain.gather(
        1, targets
    )
    _, loss_with = model.encode_with_generation_loss(batch)
    torch.testing.assert_close(loss_with - loss_without, -served_change.mean(), rtol=1e-4, atol=1e-5)
    # serving adds the shift to the log-probabilities as they are, without a temperature
    seen = torch.zeros_like(plain, dtype=torch.bool).scatter_(1, batch["item_id_list"], True)
    seen[:, 0] = False
    torch.testing.assert_close((shifted - plain)[seen], torch.full_like(plain[seen], -1.5))
    loss_with.backward()
    assert model.repeat_shift.shift.grad.abs() > 0


def test_a_large_sid_repeat_shift_retrieves_seen_items_first(build):
    model, _, test = build(**SID, repeat_bias=True)  # with the ranker: it orders what retrieval chose
    model.eval()
    batch = next(iter(test))[0]
    with torch.no_grad():
        model.repeat_shift.shift.fill_(50.0)
        candidates = model.serve(batch).candidates
    lengths = batch["item_length"]
    for row in range(len(batch)):
        history = set(batch["item_id_list"][row, : lengths[row]].tolist())
        retrieved = candidates[row, : min(len(history), model.num_candidates)].tolist()
        assert set(retrieved) <= history


def test_sid_generation_refuses_item_heads(build):
    with pytest.raises(ConfigError, match="with generation: sid, step 1's heads are mtp_heads"):
        build(**SID, n_gen_heads=2)
    assert build()[0].generator is None  # item generation builds no SID part


def test_without_item_ids_an_item_is_its_semantic_id(build):
    model, train, _ = build(**SID, item_id_embeddings=False)
    model.eval()
    assert not [name for name, p in model.named_parameters() if p.shape[:1] == (model.n_items,)]  # no row per item
    items = torch.arange(model.n_items)
    torch.testing.assert_close(model.item_vectors()[1:], F.normalize(model.item_tokens(items[1:]), dim=-1))
    assert not model.item_vectors()[0].any()  # the padding item has none
    # Give the batch's first history item the codes of another item and put that item in its place: the model reads
    # the same history. (With item ids, the two would differ by their id embeddings.)
    batch = next(iter(train))
    history = batch["item_id_list"]
    first, other = int(history[0, 0]), int(history[history != history[0, 0]].max())
    model.item_codes[first] = model.item_codes[other]
    swapped = batch["item_id_list"].clone()
    swapped[swapped == first] = other
    with torch.no_grad():
        states = model.encode(batch)
        batch["item_id_list"] = swapped
        torch.testing.assert_close(model.encode(batch), states)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"item_id_embeddings": False}, "it needs generation: sid"),
        ({**SID, "item_id_embeddings": False, "candidate_id_dropout": 0.1}, "replaces the candidates' id embeddings"),
        ({**SID, "item_id_embeddings": False, "history_id_dropout": 0.1}, "embeds its history by semantic IDs"),
    ],
)
def test_without_item_ids_the_keys_that_replace_them_are_refused(build, overrides, message):
    with pytest.raises(ConfigError, match=message):
        build(**overrides)


# -- repeat_explore: step 1 mixed with the copy of a history item (not in the paper; GPR's and OneRec's mixture) ----


@pytest.mark.parametrize("mode", REPEATS)
def test_repeat_explore_retrieves_a_distribution_that_copies_the_history_when_the_gate_says_repeat(build, mode):
    model, _, test = build(**mode)
    model.eval()
    batch = next(iter(test))[0]
    with torch.no_grad():  # the task gate starts at 0: retrieval is step 1's mixture alone
        retrieval = model.serve(batch).retrieval_scores
        torch.testing.assert_close(retrieval.exp().sum(1), torch.ones(len(batch)))
        model.repeat_explore.gate.bias.fill_(30.0)  # P(repeat) = 1
        candidates = model.serve(batch).candidates
    lengths = batch["item_length"]
    for row, items in enumerate(candidates.tolist()):
        history = set(batch["item_id_list"][row, : lengths[row]].tolist())
        on_top = items[: len(history)]  # the copied items outscore every generated one
        assert set(on_top) == history if len(history) <= len(items) else set(items) <= history


def test_item_repeat_explore_trains_the_mixture_of_the_full_softmax(build):
    model, train, _ = build(repeat_explore=True, loss_type="full_softmax")
    model.eval()  # no dropout: the loss's states are the ones read back
    batch = next(iter(train))
    with torch.no_grad():
        states, loss = model.encode_with_generation_loss(batch)
        targets = model.next_items(batch, states.shape[1])
        mixture = model.repeat_explore
        expected = []  # the mixture written out, position by position
        for row, column in targets.gt(0).nonzero().tolist():
            state, target = states[row, column], targets[row, column]
            logits = model.user_vectors(state) @ model.item_vectors()[1:].T / model.temperature  # padding excluded
            generated = logits.softmax(0)[target - 1]
            keys = mixture.key(states[row, : column + 1])
            attention = (mixture.query(state) @ keys.T / math.sqrt(model.hidden_size)).softmax(0)
            copied = attention[batch["item_id_list"][row, : column + 1] == target].sum()
            repeat = torch.sigmoid(mixture.gate(state)).squeeze()
            expected.append(-torch.log(repeat * copied + (1 - repeat) * generated))
    torch.testing.assert_close(loss, torch.stack(expected).mean())


def test_a_sampled_softmax_keeps_its_loss_and_fits_the_mixture_on_its_fixed_distribution(build):
    model, train, _ = build(repeat_explore=True, n_gen_heads=2)
    model.eval()
    batch = next(iter(train))
    batch["item_id"] = batch["item_id_list"][:, 0].clone()  # a repeat, so the copy has something to learn

    def generation_loss(with_copy: bool):
        mixture = model.repeat_explore
        model.repeat_explore = mixture if with_copy else None
        torch.manual_seed(0)  # the same negatives
        states, loss = model.encode_with_generation_loss(batch)
        model.repeat_explore = mixture
        model.zero_grad()
        loss.backward()
        return states.detach(), loss.detach(), model.gen_projection.weight.grad.clone()

    states, mixed, head_grad = generation_loss(with_copy=True)
    _, own, own_head_grad = generation_loss(with_copy=False)
    torch.testing.assert_close(head_grad, own_head_grad)  # nothing reaches the generator's head through the mixture
    with torch.no_grad():  # the mixture's NLL written out, its generator side the softmax over the whole catalogue
        targets = model.next_items(batch, states.shape[1])
        valid = targets > 0
        users = model.user_vectors(model.gen_projection(states[valid]).unflatten(-1, (2, model.hidden_size)))
        logits = torch.einsum("phd,cd->phc", users / model.temperature, model.item_vectors()[1:]).logsumexp(1)
        generated = logits.log_softmax(1).gather(1, targets[valid, None] - 1).squeeze(1)
        history = batch["item_id_list"][:, : states.shape[1]]
        parts = model.repeat_explore.at_positions(states, history, *valid.nonzero(as_tuple=True))
        mixture_nll = -parts.of_targets(targets[valid], generated)
    torch.testing.assert_close(mixed, own + mixture_nll.mean())


def test_repeat_explore_refuses_the_repeat_shift(build):
    with pytest.raises(ConfigError, match="repeat_explore and repeat_bias"):
        build(**SID, repeat_explore=True, repeat_bias=True, history_negatives=True)
