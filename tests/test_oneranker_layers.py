"""OneRanker's step-2 and step-3 layers and the shared sequence encoder, on their own (pure PyTorch, small shapes)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from recbole_oneranker.model.layers import (
    HSTUConfig,
    QueryDecoderConfig,
    RankingDecoder,
    RankingDecoderConfig,
    SequenceEncoder,
    SequenceEncoderConfig,
    TaskTokenConfig,
    TaskTokenDecoder,
    candidate_mask,
    heterogeneous_mask,
    visible_states,
)
from recbole_oneranker.model.tokenizers import kmeans

D = 16


def _step2(num_tasks: int = 3, num_fake_items: int = 2, layers: int = 1, **switches) -> TaskTokenDecoder:
    torch.manual_seed(0)
    decoder = QueryDecoderConfig(hidden_size=D, num_heads=2, num_layers=layers, dropout=0.0)
    step2 = TaskTokenDecoder(TaskTokenConfig(decoder, num_tasks, num_fake_items, **switches)).eval()
    step2.refresh_fake_items(F.normalize(torch.randn(40, D), dim=-1))
    return step2


def _memory(batch: int = 2, length: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """States ``[B, N, D]`` and what the last position of each row may read, ``[B, 1, N]``."""
    torch.manual_seed(1)
    seq_lens = torch.tensor([length, length - 2])[:batch]
    return torch.randn(batch, length, D), visible_states(length, (seq_lens - 1).unsqueeze(1), seq_lens)


def test_heterogeneous_mask_by_hand() -> None:
    T, F_ = True, False
    assert heterogeneous_mask(2, 3).tolist() == [
        [T, F_, T, T, T],  # task 0 sees itself and the fakes
        [T, T, T, T, T],  # task 1: tasks <= 1 and the fakes
        [T, T, T, F_, F_],  # fake 0: every task and itself
        [T, T, F_, T, F_],
        [T, T, F_, F_, T],
    ]
    assert heterogeneous_mask(2, 3, enabled=False).all()


@given(num_tasks=st.integers(1, 6), num_fake_items=st.integers(0, 6))
def test_heterogeneous_mask_properties(num_tasks: int, num_fake_items: int) -> None:
    mask = heterogeneous_mask(num_tasks, num_fake_items)
    tasks, fakes = mask[:num_tasks, :num_tasks], mask[num_tasks:, num_tasks:]
    assert torch.equal(tasks, torch.ones_like(tasks).tril())  # causal among tasks
    assert torch.equal(fakes, torch.eye(num_fake_items, dtype=torch.bool))  # fake tokens never see each other
    assert mask[:num_tasks, num_tasks:].all() and mask[num_tasks:, :num_tasks].all()  # task <-> fake
    assert mask.diagonal().all()  # every query sees something: no all-masked softmax row


def test_step2_masks_hold_in_the_outputs() -> None:
    step2 = _step2()
    states, visible = _memory()
    with torch.no_grad():
        before = step2(states, visible)[:, 0]  # [B, Q, D]
        step2.task_tokens[2] += torch.randn(D)  # the last task token (a random direction survives the norms)
        after_task = step2(states, visible)[:, 0]
        step2.fake_centroids[1] += torch.randn(D)  # fake token 1
        after_fake = step2(states, visible)[:, 0]
    torch.testing.assert_close(after_task[:, :2], before[:, :2])  # tasks 0 and 1 do not see task 2 (causal)
    assert not torch.allclose(after_task[:, 3:], before[:, 3:])  # fake tokens see every task
    torch.testing.assert_close(after_fake[:, 3], after_task[:, 3])  # fake 0 does not see fake 1
    assert not torch.allclose(after_fake[:, :3], after_task[:, :3])  # tasks see every fake


def test_step2_reads_only_the_visible_states() -> None:
    step2 = _step2()
    states, visible = _memory()
    changed = states.clone()
    changed[1, 3:] = torch.randn(2, D)  # row 1 has 3 real states: these are padding
    with torch.no_grad():
        torch.testing.assert_close(step2(changed, visible)[1], step2(states, visible)[1], rtol=0, atol=0)


def test_fake_items_are_the_kmeans_centroids() -> None:
    step2 = _step2(num_fake_items=4)
    items = F.normalize(torch.randn(50, D), dim=-1)
    step2.refresh_fake_items(items, seed=3)
    torch.testing.assert_close(step2.fake_centroids, kmeans(items, 4, seed=3))


def test_task_queries_score_both_channels_written_out() -> None:
    step2 = _step2()
    tokens = torch.randn(5, 3 + 2, D)  # [P, T + F, D]
    items = F.normalize(torch.randn(30, D), dim=-1)
    task_vectors, fake_outputs = tokens[:, :3], tokens[:, 3:]
    task_channel = F.normalize(task_vectors, dim=-1) @ items.t()  # [P, T, C]
    preference = torch.softmax(task_vectors @ fake_outputs.transpose(1, 2) / D**0.5, dim=-1)  # [P, T, F]
    centroid_similarity = F.cosine_similarity(items[:, None], step2.fake_centroids[None], dim=-1)  # [C, F]
    expected = task_channel + preference @ centroid_similarity.t()
    torch.testing.assert_close(step2.task_queries(tokens) @ items.t(), expected, rtol=1e-5, atol=1e-5)


def test_without_fake_items_the_task_query_is_the_task_direction() -> None:
    step2 = _step2(num_fake_items=0)
    tokens = torch.randn(4, 3, D)
    torch.testing.assert_close(step2.task_queries(tokens), F.normalize(tokens, dim=-1))


def _step3(num_stages: int = 2, predicts_value: bool = True) -> RankingDecoder:
    torch.manual_seed(0)
    decoder = QueryDecoderConfig(hidden_size=D, num_heads=2, dropout=0.0)
    return RankingDecoder(RankingDecoderConfig(decoder, num_stages, predicts_value)).eval()


def test_candidate_mask_by_hand() -> None:
    assert candidate_mask(3).int().tolist() == [[1, 0, 0, 0], [1, 1, 0, 0], [1, 0, 1, 0], [1, 0, 0, 1]]


def test_a_candidates_score_does_not_depend_on_the_rest_of_its_set() -> None:
    step3 = _step3()
    states, visible = _memory()
    tokens = torch.randn(2, 1, 4, D)  # step-2 pass-through
    first, second = torch.randn(2, 1, 5, D), torch.randn(2, 1, 5, D)
    second[..., 0, :] = first[..., 0, :]  # one shared candidate, four different companions
    with torch.no_grad():
        score_a = step3.own_scores(*step3(first, states, visible, tokens))
        score_b = step3.own_scores(*step3(second, states, visible, tokens))
    torch.testing.assert_close(score_a[..., 0], score_b[..., 0])


def test_the_pass_through_reaches_the_scores() -> None:
    step3 = _step3()
    states, visible = _memory()
    candidates = torch.randn(2, 1, 3, D)
    with torch.no_grad():
        with_tokens = step3(candidates, states, visible, torch.randn(2, 1, 4, D))[0]
        without = step3(candidates, states, visible)[0]
    assert not torch.allclose(with_tokens, without)


def test_own_score_is_log_of_chained_probabilities_times_value() -> None:
    stage_logits = torch.tensor([[0.3, -1.2]])
    log_value = torch.tensor([0.7])
    expected = torch.log(torch.sigmoid(stage_logits).prod(-1) * torch.exp(log_value))
    torch.testing.assert_close(RankingDecoder.own_scores(stage_logits, log_value), expected)


@pytest.mark.parametrize("predicts_value", [True, False])
def test_gradients_reach_every_parameter_of_both_decoders(predicts_value: bool) -> None:
    step2, step3 = _step2(layers=2).train(), _step3(predicts_value=predicts_value).train()
    states, visible = _memory()
    tokens = step2(states, visible)
    stage_logits, log_value = step3(torch.randn(2, 1, 3, D), states, visible, tokens)
    queries = step2.task_queries(tokens[:, 0])
    (stage_logits.sum() + log_value.sum() + queries.pow(2).sum()).backward()
    for name, parameter in [*step2.named_parameters(), *step3.named_parameters()]:
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def _encoder(bidirectional_prefix: bool) -> SequenceEncoder:
    torch.manual_seed(0)
    hstu = HSTUConfig(embedding_dim=D, linear_hidden_dim=8, attention_dim=8, num_heads=2, num_blocks=2,
                      max_seq_len=2 + 6 + 1, dropout=0.0, relative_bias="position")  # fmt: skip
    return SequenceEncoder(SequenceEncoderConfig(20, hstu, bidirectional_prefix=bidirectional_prefix)).eval()


@pytest.mark.parametrize("bidirectional_prefix", [False, True])
def test_encoder_history_is_causal_and_the_prefix_is_read(bidirectional_prefix: bool) -> None:
    encoder = _encoder(bidirectional_prefix)
    items, lengths = torch.tensor([[3, 4, 5, 6, 0, 0], [7, 8, 0, 0, 0, 0]]), torch.tensor([4, 2])
    prefix = torch.randn(2, 2, D)
    later = items.clone()
    later[0, 3] = 9  # the last real item of row 0
    other_prefix = prefix.clone()
    other_prefix[:, 1] += torch.randn(D)  # a random direction: a constant shift would vanish in the layer norms
    with torch.no_grad():
        states = encoder(items, lengths, prefix=prefix)
        torch.testing.assert_close(encoder(later, lengths, prefix=prefix)[0, :3], states[0, :3], rtol=0, atol=0)
        assert not torch.allclose(encoder(items, lengths, prefix=other_prefix)[:, 0], states[:, 0])
        assert (states[1, 2:] == 0).all()  # padding
