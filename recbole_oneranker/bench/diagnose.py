"""Diagnostics of a trained checkpoint: where its top-10 comes from, and what OneRanker's ranker adds.

    python bench/diagnose.py seen --checkpoint saved/RUN.pth [--split test] [--k 10]
    python bench/diagnose.py ranker --checkpoint saved/RUN.pth [--refit-epochs 8] [--lr 3e-3]
    python bench/diagnose.py gates --checkpoint saved/RUN.pth [--sweep task_gate=0.25,0.5,1]
    python bench/diagnose.py alignment --checkpoint saved/FULL.pth saved/NO_DC.pth [--split valid]
    python bench/diagnose.py candidates --checkpoint saved/A.pth saved/B.pth [--negatives 29] [--seed 2020]
    python bench/diagnose.py popularity --checkpoint saved/RUN.pth [--split valid] [--top 30] [--weights -0.1 0.1]
    python bench/diagnose.py repeats --dataset taobao [--bench-config bench/configs/X.yaml] [--k 10]

``seen``: the share of the model's top-K slots that are items already in the user's history (the model's input
window), the share of targets that are, and NDCG@K of the same scores with seen items kept (RecBole's protocol)
and masked (HSTU's), on the valid or test split.

``ranker`` (OneRanker): does the ranking decoder order the retrieved candidate sets better than retrieval does?
  1. *As trained*: on the valid users whose target is among the top ``num_candidates`` retrieved items, the
     target's rank within that set by retrieval, by the ranker's own score and by the served order.
  2. *Refit*: candidate sets at the training positions of the training rows (the checkpoint's backbone and step-2
     tokens frozen), users split by id (one in ``--heldout-every`` held out). Three scorers are fitted to the
     sets of the other users with a listwise softmax loss and measured on the held-out users' sets after every
     pass: the ranker from its trained weights (own score), the ranker as a residual of weight 1 on the
     retrieval logit, and a bilinear map of the generator's own inputs (item embedding x sequence state). If
     even the last cannot beat retrieval's order on held-out sets, the sets hold no order the ranker could learn
     from these features.

``gates`` (OneRanker): what each learned gate contributes to the served order. ``task_gate`` weighs step 2's last
task token in the retrieval score, ``rank_gate`` the ranker's correction of the candidates' order; both start at 0
and only some losses train them (``task_gate``: the DC loss alone). The checkpoint is evaluated by RecBole's
evaluator on the valid and test splits as trained, with each gate set to 0, with every gate at 0, and with each
``--sweep`` value (the metrics at the validation metric's cut-off).

``alignment`` (OneRanker, the paper's Figure 3): how far the ranker's order of each served candidate set is from the
generator's (retrieval's) order of the same set, for one or several checkpoints side by side (e.g. with and without
the DC loss). Per candidate ``|rank by retrieval - rank by the ranker|`` (mean, median and interquartile range over
every candidate of every user), and per set the top-K overlap of the two orders (the share of retrieval's top K that
is also the ranker's top K). Two ranker orders: its own score, and the served one (with ``ranker_residual``, the
gated score added to the retrieval logit, which is also the DC loss's teacher).

``candidates``: the candidate-set protocol (each test target among itself and ``--negatives`` sampled items, scored by
``predict``) for one or several checkpoints, with the negatives drawn uniformly and in proportion to popularity
(``--sampling``). The draws are seeded, so every checkpoint of one dataset is ranked against the same negatives and
rows compare user by user, which the runs' own candidate-set metrics (drawn after training) do not.

``popularity``: is there an order within the model's top N that the items' popularity (a candidate-level feature a
ranker could read and a cosine-similarity generator cannot express exactly) knows and the model does not? The top N
of each user is reordered by its standardised score plus ``w`` times its standardised ``log(1 + count)``, for
several weights, and by popularity alone; the target's rank within the set and NDCG@K are compared with the
model's own order.

``repeats``: every benchmark row of a dataset (its committed rank files, no checkpoint), its test HR@K and NDCG@K
split by whether the target is among the items of the history the model read (a repeat) or not: on Taobao most
targets are repeats, and a model's score there says whether it can point back at a seen item.

Each prints a markdown report (``--out FILE`` also writes it).
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from recbole.utils import init_seed
from torch import Tensor, nn

from recbole_oneranker.bench.common import REPO
from recbole_oneranker.bench.repeats import RepeatShares, repeats_report
from recbole_oneranker.checkpoints import load_data_and_model
from recbole_oneranker.evaluator.ranking import mask_seen_items, rank_metrics, seen_items, target_ranks
from recbole_oneranker.quick_start import CANDIDATE_SAMPLERS, CANDIDATE_TOPK, evaluate_candidate_set
from recbole_oneranker.trainer_lookup import get_trainer

if TYPE_CHECKING:
    from recbole.data.interaction import Interaction


# -- seen items ---------------------------------------------------------------------------------------------------


@torch.no_grad()
def seen_report(model, loader: Iterable, k: int = 10) -> dict[str, float]:
    """Share of top-``k`` slots that hold history items, and NDCG@k with them kept and masked."""
    shares, repeats, kept, masked = [], [], [], []
    for batch in loader:
        interaction = batch[0].to(model.device)
        scores = model.full_sort_predict(interaction).view(len(interaction), -1)
        scores[:, 0] = -math.inf  # padding
        history = interaction[model.ITEM_SEQ]  # [B, L], 0-padded
        target = interaction[model.ITEM_ID]
        in_history = seen_items(history, scores.shape[1])
        shares.append(in_history.gather(1, scores.topk(k, dim=1).indices).float().mean(1))
        repeats.append(in_history.gather(1, target[:, None]).squeeze(1).float())
        is_target = F.one_hot(target, scores.shape[1]).bool()
        kept.append(rank_metrics(target_ranks(scores, is_target).cpu().numpy(), k)["ndcg"])
        # HSTU's protocol masks every history item, a repeated target too (its NDCG is then 0)
        masked_scores = mask_seen_items(scores.clone(), history)
        masked_ranks = torch.where(in_history.gather(1, target[:, None]).squeeze(1), scores.shape[1],
                                   target_ranks(masked_scores, is_target))  # fmt: skip
        masked.append(rank_metrics(masked_ranks.cpu().numpy(), k)["ndcg"])
    return {
        "users": float(sum(len(s) for s in shares)),
        "targets already in the history": float(torch.cat(repeats).mean()),
        f"top-{k} slots holding a history item": float(torch.cat(shares).mean()),
        f"NDCG@{k}, seen items kept": float(np.concatenate(kept).mean()),
        f"NDCG@{k}, seen items masked": float(np.concatenate(masked).mean()),
    }


# -- popularity ----------------------------------------------------------------------------------------------------


@torch.no_grad()
def popularity_report(model, loader: Iterable, weights: Sequence[float], top: int, k: int = 10) -> dict[str, dict]:
    """Would an item's popularity order the model's top ``top`` better than the model's own scores do?

    Popularity is ``log(1 + count)``, count = the item's occurrences in the split's histories (the model's input
    windows: on a leave-one-out split, each user's training interactions, the last MAX_ITEM_LIST_LENGTH of them),
    so no target is counted. Each user's top ``top`` items are re-scored by ``z(score) + w * z(popularity)`` for
    each ``w`` of ``weights``, ``z`` standardising over the user's top (so ``w`` means the same for every model and
    scale: 1 gives both an equal say), and by popularity alone (ties by score); items below the top keep their place.

    Returns:
        ``{order: {"mean rank": .., "HR@1": .., "NDCG": .., "NDCG@k": ..}}``: the first three within the sets that
        hold the target, NDCG@k over every user (full ranking); and ``"sets"``: how many users, and how many sets
        hold their target.
    """
    counts = torch.zeros(model.n_items)
    top_items, top_scores, targets = [], [], []
    for batch in loader:
        interaction = batch[0].to(model.device)
        history = interaction[model.ITEM_SEQ]
        scores = model.full_sort_predict(interaction).view(len(interaction), -1)
        scores[:, 0] = -math.inf  # padding
        counts += torch.bincount(history[history > 0].cpu(), minlength=model.n_items).float()
        best = scores.topk(top, dim=1)
        top_items.append(best.indices.cpu())
        top_scores.append(best.values.cpu())
        targets.append(interaction[model.ITEM_ID].cpu())
    items, scores, target = torch.cat(top_items), torch.cat(top_scores), torch.cat(targets)
    is_target = items == target.unsqueeze(1)  # [U, top]
    in_set = is_target.any(1)
    popularity = torch.log1p(counts)[items]  # [U, top]
    z_scores, z_popularity = _standardised(scores), _standardised(popularity)
    orders = {"model's scores": scores} | {f"score {w:+g} x popularity": z_scores + w * z_popularity for w in weights}
    orders["popularity alone"] = _popularity_order(popularity)
    report: dict[str, dict] = {}
    for name, order in orders.items():
        ranks = target_ranks(order, is_target)  # [U], 1-based within the set
        ndcg = rank_metrics(torch.where(in_set, ranks, top + 1).numpy(), k)["ndcg"]  # outside the set: below the top
        report[name] = _rank_summary(ranks[in_set]) | {f"NDCG@{k}": float(ndcg.mean())}
    report["sets"] = {"users": len(target), "holding the target": int(in_set.sum())}
    return report


def _standardised(x: Tensor) -> Tensor:
    """``x`` (``[U, N]``) standardised along each row (a constant row becomes 0)."""
    centred = x - x.mean(1, keepdim=True)
    return centred / centred.std(1, keepdim=True).clamp(min=1e-12)


def _popularity_order(popularity: Tensor) -> Tensor:
    """Scores ``[U, N]`` that order each row by ``popularity``, ties by column (the model's order: columns come
    sorted by its score), exactly: a tie-break added to the popularity would be lost in float32 rounding."""
    by_popularity = torch.sort(popularity, dim=1, descending=True, stable=True).indices
    return -by_popularity.argsort(1).float()  # minus the place in that order


# -- gates ---------------------------------------------------------------------------------------------------------

GATES = ("task_gate", "rank_gate")


@torch.no_grad()
def gates_report(
    model,
    evaluate: Callable[[Iterable], dict[str, float]],
    loaders: dict[str, Iterable],
    sweep: dict[str, list[float]] | None = None,
) -> dict:
    """Metrics of each split (``evaluate(loader)``) with the gates as trained, each gate at 0, all at 0, and each
    gate of ``sweep`` at each of its values (the others as trained).

    Returns ``{"gates": {name: trained value}, "rows": {label: {split: metrics}}}``; the gates are restored after.
    """
    trained = {name: getattr(model, name).detach().clone() for name in GATES if hasattr(model, name)}
    variants: dict[str, dict[str, float]] = {"as trained": {}} | {f"{name} = 0": {name: 0.0} for name in trained}
    if len(trained) > 1:
        variants["every gate = 0"] = dict.fromkeys(trained, 0.0)
    for name, values in (sweep or {}).items():
        if name not in trained:
            raise ValueError(f"no gate '{name}' in this model (it has: {', '.join(trained) or 'none'})")
        variants |= {f"{name} = {value:g}": {name: value} for value in values}
    rows = {}
    try:
        for label, settings in variants.items():
            for name, value in trained.items():
                getattr(model, name).copy_(torch.full_like(value, settings[name]) if name in settings else value)
            rows[label] = {split: evaluate(loader) for split, loader in loaders.items()}
    finally:
        for name, value in trained.items():
            getattr(model, name).copy_(value)
    return {"gates": {name: float(value) for name, value in trained.items()}, "rows": rows}


# -- ranker: as trained -------------------------------------------------------------------------------------------


@torch.no_grad()
def ranker_as_trained(model, loader: Iterable) -> dict[str, dict[str, float]]:
    """Target rank within the retrieved set of valid users, by retrieval, the ranker alone and the served order."""
    ranks: dict[str, list[Tensor]] = {"retrieval": [], "ranker alone": [], "served (ranker over retrieval)": []}
    found = total = 0
    for interaction, candidates, orders in _served_sets(model, loader):
        is_target = candidates == interaction[model.ITEM_ID].unsqueeze(1)
        keep = is_target.any(1)
        found, total = found + int(keep.sum()), total + len(keep)
        for name, scores in zip(ranks, orders, strict=True):
            ranks[name].append(target_ranks(scores, is_target)[keep])
    summary = {name: _rank_summary(torch.cat(r)) for name, r in ranks.items()}
    summary["sets"] = {"with the target": float(found), "users": float(total)}
    return summary


def _served_sets(model, loader: Iterable) -> Iterator[tuple[Interaction, Tensor, tuple[Tensor, Tensor, Tensor]]]:
    """Per batch of ``loader``: the interaction, the candidates ``full_sort_predict`` serves (``[B, N]``) and their
    scores by retrieval, by the ranker alone and in the served order (``[B, N]`` each)."""
    for batch in loader:
        interaction = batch[0].to(model.device)
        served = model.serve(interaction)
        candidate_retrieval = served.retrieval_scores.gather(1, served.candidates)
        yield interaction, served.candidates, (candidate_retrieval, served.ranker_scores, served.candidate_scores)


def _rank_summary(ranks: Tensor) -> dict[str, float]:
    """Mean rank, HR@1 and NDCG (no cut-off) of targets at the 1-based ``ranks`` within their sets (NaN for
    none: e.g. no held-out set whose target retrieval found)."""
    ranks = ranks.cpu().numpy()
    if not len(ranks):
        return dict.fromkeys(("mean rank", "HR@1", "NDCG"), math.nan)
    return {"mean rank": float(ranks.mean()), "HR@1": float(rank_metrics(ranks, 1)["hit"].mean()),
            "NDCG": float(rank_metrics(ranks)["ndcg"].mean())}  # fmt: skip


# -- ranker: refit on frozen features -----------------------------------------------------------------------------

# A cached training candidate set: the step-3 inputs (``inputs``, a ``DecoderInputs``) and tensors about its sets.
CandidateSet = dict[str, Any]


@torch.no_grad()
def candidate_sets(model, loader: Iterable, passes: int, heldout_every: int) -> list[CandidateSet]:
    """The training-time candidate sets of ``passes`` passes over ``loader``, with everything step 3 reads.

    Each set is at one of the row's ``decoder_positions`` (drawn as in training) and holds the top retrieved
    items, the target forced in; ``retrieved`` says whether retrieval found it, ``heldout`` whether the user is
    held out (``user_id % heldout_every == 0``).
    """
    sets = []
    for _ in range(passes):
        for interaction in loader:
            interaction = interaction.to(model.device)
            states, _ = model.encode_with_generation_loss(interaction)
            inputs = model.decoder_inputs(interaction, states)  # positions drawn as in training
            found = model.training_candidates(interaction, inputs)  # as the ranker's training builds them
            batch, ranked = inputs.positions.shape
            sets.append({
                "inputs": inputs, "candidates": found.candidates.view(batch, ranked, -1),
                "flat_states": inputs.flat_states, "is_target": found.candidates == inputs.targets.unsqueeze(1),
                "retrieved": found.retrieved, "retrieval": found.retrieval.gather(1, found.candidates),
                "heldout": (interaction[model.USER_ID] % heldout_every == 0).repeat_interleave(ranked),
            })  # fmt: skip
    return sets


class GeneratorBilinear(nn.Module):
    """``<W e_c, s_p> / sqrt(D)``: a candidate's embedding against the sequence state, the generator's own inputs."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.weight = nn.Linear(hidden_size, hidden_size)

    def forward(self, candidate_embeddings: Tensor, states: Tensor) -> Tensor:  # [P, N, D], [P, D] -> [P, N]
        return torch.einsum("pnd,pd->pn", self.weight(candidate_embeddings), states) / math.sqrt(states.shape[-1])


def _ranker_score(model, s: CandidateSet) -> Tensor:
    """``[BR, N]`` the ranker's own score of each candidate of a cached set."""
    return model.rank(s["inputs"], s["candidates"])


def _scorers(model) -> dict[str, tuple[Callable[[CandidateSet], Tensor], list[nn.Parameter]]]:
    """Each refit scorer: (the final score of a set's candidates, the parameters it fits)."""
    ranker_params = list(model.ranker.parameters())
    bilinear = GeneratorBilinear(model.hidden_size).to(model.device)
    return {
        "ranker alone": (lambda s: _ranker_score(model, s), ranker_params),
        "ranker as residual (weight 1)": (lambda s: s["retrieval"] + _ranker_score(model, s), ranker_params),
        "bilinear on the generator's inputs": (
            lambda s: bilinear(model.item_embeddings(s["candidates"].flatten(0, 1)), s["flat_states"]),
            list(bilinear.parameters()),
        ),
    }


def refit(model, sets: list[CandidateSet], epochs: int, lr: float, log=print) -> dict[str, list[dict]]:
    """Fit each scorer to the training users' sets (listwise softmax over a set, only sets retrieval found the
    target for, as the ranker trains) and measure it on the held-out users' sets before and after every pass."""
    initial = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
    curves: dict[str, list[dict]] = {"retrieval": [_measure(lambda s: s["retrieval"], sets)]}
    for name, (score, params) in _scorers(model).items():
        model.load_state_dict(initial)  # every scorer starts from the checkpoint
        for p in model.parameters():
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        optimizer = torch.optim.AdamW(params, lr=lr)
        curve = [_measure(score, sets, model)]
        for epoch in range(epochs):
            model.train()
            for s in sets:
                train = s["retrieved"] & ~s["heldout"]
                loss = -(F.log_softmax(score(s), dim=1) * s["is_target"]).sum(1)[train].mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            curve.append(_measure(score, sets, model))
            log(f"  {name}, pass {epoch + 1}/{epochs}: held-out mean rank {curve[-1]['mean rank']:.2f}")
        curves[name] = curve
    model.load_state_dict(initial)
    return curves


@torch.no_grad()
def _measure(score, sets: list[CandidateSet], model=None) -> dict[str, float]:
    if model is not None:
        model.eval()
    ranks = [target_ranks(score(s), s["is_target"])[s["retrieved"] & s["heldout"]] for s in sets]
    return _rank_summary(torch.cat(ranks))


# -- alignment of the generator's and the ranker's orders (the paper's Figure 3) ----------------------------------


PAPER_CUTOFFS = (1, 3, 5, 10, 15)  # the HR@K cut-offs of the paper's candidate-set protocol


def _ranks_within(scores: Tensor) -> Tensor:
    """``[B, N]``: the 1-based rank of each candidate within its row by ``scores``, highest first."""
    return scores.argsort(dim=1, descending=True, stable=True).argsort(dim=1) + 1


def order_alignment(generator: Tensor, ranker: Tensor, cutoffs: Sequence[int]) -> tuple[Tensor, Tensor]:
    """Two orders of the same candidate sets (``[B, N]`` scores each) compared.

    Returns:
        ``[B * N]`` each candidate's rank gap ``|rank by generator - rank by ranker|``, and ``[B, len(cutoffs)]``
        each set's top-K overlap ``|top-K by generator & top-K by ranker| / K``.
    """
    by_generator, by_ranker = _ranks_within(generator), _ranks_within(ranker)
    overlap = [((by_generator <= k) & (by_ranker <= k)).sum(1) / k for k in cutoffs]
    return (by_generator - by_ranker).abs().flatten(), torch.stack(overlap, 1)


@torch.no_grad()
def alignment_report(model, loader: Iterable, cutoffs: Sequence[int]) -> dict[str, dict[str, float]]:
    """Rank gaps and top-K overlaps between retrieval's order of each served set and the ranker's (its own score,
    and the served order), summarised over every user of ``loader``."""
    orders: dict[str, tuple[list[Tensor], list[Tensor]]] = {"ranker alone": ([], []), "served": ([], [])}
    for _, _, (generator, *rankers) in _served_sets(model, loader):
        for (gaps, overlaps), ranker in zip(orders.values(), rankers, strict=True):
            gap, overlap = order_alignment(generator, ranker, cutoffs)
            gaps.append(gap)
            overlaps.append(overlap)
    return {name: _alignment_summary(torch.cat(gaps).float(), torch.cat(overlaps), cutoffs)
            for name, (gaps, overlaps) in orders.items()}  # fmt: skip


def chance_alignment(num_candidates: int, cutoffs: Sequence[int]) -> dict[str, float]:
    """What :func:`alignment_report` gives for two independent uniformly random orders of ``num_candidates`` items:
    the rank gap over every pair of ranks, and top-K overlaps of ``K / num_candidates``."""
    ranks = torch.arange(1, num_candidates + 1)
    gaps = (ranks[:, None] - ranks[None, :]).abs().flatten().float()
    return _alignment_summary(gaps, torch.tensor([[k / num_candidates for k in cutoffs]]), cutoffs)


def _alignment_summary(gaps: Tensor, overlaps: Tensor, cutoffs: Sequence[int]) -> dict[str, float]:
    first, median, third = torch.quantile(gaps, torch.tensor([0.25, 0.5, 0.75], device=gaps.device)).tolist()
    summary = {"mean |rank gap|": float(gaps.mean()), "median": median, "IQR": third - first}
    return summary | {f"top-{k} overlap": float(value) for k, value in zip(cutoffs, overlaps.mean(0), strict=True)}


# -- reports ------------------------------------------------------------------------------------------------------


# -- candidates ----------------------------------------------------------------------------------------------------


def candidate_report(checkpoint: str, data_path: str | None, samplings: Sequence[str], negatives: int, seed: int):
    """``{sampling: HR/NDCG@K}`` of one checkpoint under the candidate-set protocol, each sampling's negatives drawn
    from the same seed (the same draws for every checkpoint of a dataset); with the checkpoint's config."""
    config, model, dataset, train_data, valid_data, test_data = load_data_and_model(checkpoint, data_path)
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    splits = (train_data._dataset, valid_data._dataset, test_data._dataset)
    results = {}
    for sampling in samplings:
        config.final_config_dict["candidate_sampling"] = sampling
        init_seed(seed, reproducibility=True)
        results[sampling] = evaluate_candidate_set(config, trainer, dataset, splits, negatives).metrics
    return config, results


def candidates_markdown(runs: list[tuple[str, str, dict]], negatives: int, seed: int, argv: list[str]) -> str:
    """``runs``: (checkpoint, model, :func:`candidate_report` results) for each checkpoint."""
    metrics = [f"{name}@{k}" for name in ("hit", "ndcg") for k in CANDIDATE_TOPK]
    rows = [[checkpoint, model, sampling] + [f"{result[m]:.4f}" for m in metrics]
            for checkpoint, model, results in runs for sampling, result in results.items()]  # fmt: skip
    titles = [m.replace("hit", "HR").replace("ndcg", "NDCG") for m in metrics]
    return (f"# Candidate-set protocol: each test target among itself and {negatives} sampled items\n\n"
            f"{_command(argv)}\n\nNegatives drawn with seed {seed}: the same for every checkpoint of a dataset. "
            "'popularity': in proportion to each item's interactions in the whole dataset.\n\n"
            f"{_table(['checkpoint', 'model', 'negatives drawn', *titles], rows)}\n")  # fmt: skip


def _table(header: list[str], rows: Iterable[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def _command(argv: list[str]) -> str:
    return f"`python bench/diagnose.py {shlex.join(argv)}`"


def seen_markdown(config, split: str, k: int, result: dict[str, float], argv: list[str]) -> str:
    rows = [[name, f"{value:.0f}" if name == "users" else f"{value:.4f}"] for name, value in result.items()]
    return (f"# Seen items in the top-{k}: {config['model']} on {config['dataset']} ({split} split)\n\n"
            f"{_command(argv)}\n\n{_table(['measure', 'value'], rows)}\n")  # fmt: skip


def popularity_markdown(config, args, result: dict[str, dict], argv: list[str]) -> str:
    sets = result.pop("sets")
    metrics = list(next(iter(result.values())))
    rows = [[name] + [f"{values[m]:.4f}" for m in metrics] for name, values in result.items()]
    return (f"# Popularity within the top {args.top}: {config['model']} on {config['dataset']} ({args.split} split)\n\n"
            f"{_command(argv)}\n\n{sets['users']} users; the top {args.top} holds the target for "
            f"{sets['holding the target']}. Popularity: log(1 + the item's occurrences in the split's histories). "
            f"'score + w x popularity': both standardised within each user's top {args.top}, so w = 1 gives them an "
            "equal say. Mean rank, HR@1 and NDCG within the sets that hold the target; "
            f"NDCG@{args.k} over every user, the items below the top {args.top} in place.\n\n"
            f"{_table(['order of the top ' + str(args.top), *metrics], rows)}\n")  # fmt: skip


def ranker_markdown(model, as_trained: dict, curves: dict[str, list[dict]], args, argv: list[str]) -> str:
    sets = as_trained.pop("sets")
    gates = {name: float(getattr(model, name)) for name in ("rank_gate", "task_gate") if hasattr(model, name)}
    trained_rows = [[name, f"{r['mean rank']:.2f}", f"{r['HR@1']:.3f}", f"{r['NDCG']:.3f}"]
                    for name, r in as_trained.items()]  # fmt: skip
    chance = (model.num_candidates + 1) / 2
    best = {name: min(curve, key=lambda r: r["mean rank"]) for name, curve in curves.items()}
    refit_rows = [[name, f"{curve[0]['mean rank']:.2f}", f"{best[name]['mean rank']:.2f}",
                   f"{curve[-1]['mean rank']:.2f}", f"{best[name]['NDCG']:.3f}"]
                  for name, curve in curves.items()]  # fmt: skip
    return "\n".join([
        f"# What OneRanker's ranker adds over retrieval: {args.checkpoint}",
        "", _command(argv), "",
        f"Gates of the checkpoint: {', '.join(f'{k} = {v:.4f}' for k, v in gates.items())}. "
        f"Chance: mean rank {chance:.1f} in a set of {model.num_candidates}.",
        "", f"## As trained: valid users whose target retrieval put in its top {model.num_candidates} "
        f"({sets['with the target']:.0f} of {sets['users']:.0f})", "",
        _table(["order", "mean rank", "HR@1", "NDCG"], trained_rows), "",
        f"## Refit on frozen features: held-out users' training-position sets (user id % {args.heldout_every} == 0)",
        "", f"{args.passes} pass(es) of the training rows give the sets; each scorer is fitted for {args.refit_epochs} "
        f"epochs (AdamW, lr {args.lr}) on the other users' sets. Best and last: over those epochs.", "",
        _table(["scorer", "before", "best", "last", "NDCG at best"], refit_rows), "",
    ])  # fmt: skip


def gates_markdown(config, result: dict, argv: list[str]) -> str:
    rows = result["rows"]
    cutoff = "@" + str(config["valid_metric"]).split("@")[-1]  # the validation metric's K: one column per metric
    metrics = [name for name in next(iter(next(iter(rows.values())).values())) if name.endswith(cutoff)]
    header = ["gates"] + [f"{split} {metric}" for split in next(iter(rows.values())) for metric in metrics]
    cells = [[label] + [f"{values[metric]:.4f}" for values in splits.values() for metric in metrics]
             for label, splits in rows.items()]  # fmt: skip
    gates = ", ".join(f"{name} = {value:.4f}" for name, value in result["gates"].items())
    return (f"# What each gate adds: {config['model']} on {config['dataset']}\n\n{_command(argv)}\n\n"
            f"Gates of the checkpoint: {gates}. Each row sets the named gate(s) to the value shown, the others as "
            "trained.\n\n"
            f"{_table(header, cells)}\n")  # fmt: skip


def alignment_markdown(runs: list[tuple[str, dict, dict]], split: str, argv: list[str]) -> str:
    """``runs``: (checkpoint, its settings shown, :func:`alignment_report`) for each checkpoint (the last: chance)."""
    metrics = list(next(iter(runs[0][2].values())))
    rows = [[checkpoint, ", ".join(f"{k} = {v:.4g}" for k, v in settings.items()), order]
            + [f"{value:.3f}" for value in result.values()]
            for checkpoint, settings, report in runs for order, result in report.items()]  # fmt: skip
    return (f"# How far the ranker's order is from the generator's ({split} split)\n\n{_command(argv)}\n\n"
            "Rank gap: |rank by retrieval - rank by the ranker| of each candidate in its served set (mean, median, "
            "interquartile range); top-K overlap: the share of retrieval's top K that is also the ranker's. "
            "'served': the order step 3 serves (the DC loss's teacher).\n\n"
            f"{_table(['checkpoint', 'settings', 'ranker order', *metrics], rows)}\n")  # fmt: skip


def _gate_values(text: str) -> tuple[str, list[float]]:
    name, _, values = text.partition("=")
    try:
        return name, [float(value) for value in values.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected GATE=V1,V2,... (e.g. task_gate=0.25,0.5), got '{text}'") from None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="report", required=True)
    seen = sub.add_parser("seen", help="share of history items in the top-K, NDCG@K kept vs masked")
    ranker = sub.add_parser("ranker", help="what OneRanker's ranking decoder adds over retrieval")
    gates = sub.add_parser("gates", help="OneRanker's metrics with each learned gate as trained and at 0")
    alignment = sub.add_parser("alignment", help="OneRanker: the ranker's order against the generator's (Figure 3)")
    candidates = sub.add_parser("candidates", help="candidate-set HR/NDCG@K, uniform and popularity negatives")
    popularity = sub.add_parser("popularity", help="the model's top-N reordered with the items' popularity")
    repeats = sub.add_parser("repeats", help="benchmark rows' test metrics on repeat and on new targets")
    repeats.add_argument("--dataset", default="taobao", help="its rows are in bench/configs/<dataset>.yaml")
    repeats.add_argument("--bench-config", type=Path, help="another bench config file (e.g. an ablation)")
    repeats.add_argument("--results", type=Path, default=REPO / "results", help="where the rows' CSV is")
    repeats.add_argument("--data-path", help="folder holding <dataset>/ (default: dataset/)")
    repeats.add_argument("--k", type=int, default=10, help="cut-off of HR@K and NDCG@K")
    repeats.add_argument("--out", type=Path, help="also write the report to this file")
    for p in (seen, ranker, gates, alignment, candidates, popularity):
        p.add_argument("--checkpoint", required=True, nargs="+" if p in (alignment, candidates) else None,
                       help="a checkpoint saved by this package (saved/<run_id>.pth)")  # fmt: skip
        p.add_argument("--data-path", help="folder holding <dataset>/ (default: the one it was trained from)")
        p.add_argument("--out", type=Path, help="also write the report to this file")
    seen.add_argument("--split", choices=("valid", "test"), default="test")
    popularity.add_argument("--split", choices=("valid", "test"), default="valid")
    popularity.add_argument("--top", type=int, default=30, help="items reordered per user (the paper's 30)")
    popularity.add_argument("--k", type=int, default=10, help="cut-off of NDCG@K, at most --top")
    popularity.add_argument("--weights", type=float, nargs="+", default=[-1.0, -0.3, -0.1, 0.1, 0.3, 1.0],
                            help="weights of the standardised log(1 + count), the score's at 1")  # fmt: skip
    alignment.add_argument("--split", choices=("valid", "test"), default="valid")
    alignment.add_argument("--cutoffs", type=int, nargs="+", help="K of the top-K overlaps, at most num_candidates "
                           "(default: the paper's 1 3 5 10 15 up to num_candidates)")  # fmt: skip
    seen.add_argument("--k", type=int, default=10, help="cut-off of the top-K and of NDCG@K")
    gates.add_argument("--sweep", nargs="+", default=[], type=_gate_values, metavar="GATE=V1,V2,...",
                       help="also evaluate GATE at each value, e.g. task_gate=0.25,0.5,1")  # fmt: skip
    candidates.add_argument("--negatives", type=int, default=29, help="sampled items per target (the paper: 29)")
    candidates.add_argument("--sampling", nargs="+", choices=list(CANDIDATE_SAMPLERS),
                            default=list(CANDIDATE_SAMPLERS),
                            help="how the negatives are drawn (default: both)")  # fmt: skip
    candidates.add_argument("--seed", type=int, default=2020, help="seed of the draws")
    ranker.add_argument("--refit-epochs", type=int, default=8, help="passes over the cached sets per scorer")
    ranker.add_argument("--lr", type=float, default=3e-3)
    ranker.add_argument("--passes", type=int, default=3, help="passes over the training rows that build the sets")
    ranker.add_argument("--heldout-every", type=int, default=5, help="hold out users with user_id %% N == 0")
    ranker.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.report == "repeats":
        return repeats_main(args, argv)
    for checkpoint in args.checkpoint if isinstance(args.checkpoint, list) else [args.checkpoint]:
        if not Path(checkpoint).is_file():
            parser.error(f"no checkpoint at {checkpoint}")
    if args.report == "alignment":
        return _write(alignment_main(parser, args, argv), args.out)
    if args.report == "candidates":
        if args.negatives < 1:
            parser.error("--negatives must be at least 1")
        runs = []
        for checkpoint in args.checkpoint:
            print(f"candidates: {checkpoint}", flush=True)
            config, results = candidate_report(checkpoint, args.data_path, args.sampling, args.negatives, args.seed)
            runs.append((checkpoint, config["model"], results))
        return _write(candidates_markdown(runs, args.negatives, args.seed, argv), args.out)

    if args.report == "popularity" and not 1 <= args.k <= args.top:
        parser.error("--k must be in [1, --top]")
    config, model, _, train_data, valid_data, test_data = load_data_and_model(args.checkpoint, args.data_path)
    loaders = {"valid": valid_data, "test": test_data}
    if args.report == "popularity":
        if args.top >= model.n_items:  # item 0 is padding
            parser.error(f"--top {args.top} exceeds the {model.n_items - 1} items of {config['dataset']}")
        result = popularity_report(model, loaders[args.split], args.weights, args.top, args.k)
        report = popularity_markdown(config, args, result, argv)
    elif args.report == "seen":
        report = seen_markdown(config, args.split, args.k, seen_report(model, loaders[args.split], args.k), argv)
    elif args.report == "gates":
        if not any(hasattr(model, name) for name in GATES):
            parser.error(f"{args.checkpoint} is a {config['model']} without gates ({', '.join(GATES)})")
        trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
        try:
            result = gates_report(
                model,
                lambda loader: dict(trainer.evaluate(loader, load_best_model=False, show_progress=False)),
                loaders,
                sweep=dict(args.sweep),
            )
        except ValueError as error:  # a --sweep gate the model lacks, found before anything is evaluated
            parser.error(f"--sweep: {error}")
        report = gates_markdown(config, result, argv)
    else:
        if not getattr(model, "use_ranker", False):
            parser.error(f"{args.checkpoint} is a {config['model']} without a ranker")
        print("as trained: valid split", flush=True)
        as_trained = ranker_as_trained(model, valid_data)
        torch.manual_seed(args.seed)
        sets = candidate_sets(model, train_data, args.passes, args.heldout_every)
        print(f"refit: {sum(len(s['retrieved']) for s in sets)} candidate sets", flush=True)
        curves = refit(model, sets, args.refit_epochs, args.lr, log=lambda line: print(line, flush=True))
        report = ranker_markdown(model, as_trained, curves, args, argv)
    return _write(report, args.out)


def repeats_markdown(
    dataset: str,
    shares: RepeatShares,
    report: list[tuple[str, int, dict[str, tuple[float, float]]]],
    k: int,
    command: str,
) -> str:
    """Per benchmark row, NDCG@k on all, repeat (of the last or an earlier history item) and new targets, and HR@k
    on all, repeat and new ones (mean ± t-interval when several seeds)."""
    columns = [("ndcg", part) for part in ("all", "repeat", "last", "earlier", "new")]
    columns += [("hit", part) for part in ("all", "repeat", "new")]
    names = {"ndcg": f"NDCG@{k}", "hit": f"HR@{k}"}
    header = ["row", "seeds", *(f"{names[name]} {part}" for name, part in columns)]
    rows = [
        [label, str(seeds), *(_mean_cell(split[f"{name}_{part}"], seeds) for name, part in columns)]
        for label, seeds, split in report
    ]
    intro = (
        f"Produced by {command} from the rank files of the benchmark rows (no training).\n"
        f"{shares.repeat:.1%} of the test users' targets are among the items of the history their test row holds "
        "(the model's input window); *repeat* columns average over those users, *last* over those whose target is "
        "the history's last item (under leave-one-out, the validation target), *earlier* over the rest of them, "
        "*new* over the others; mean ± 95% t-interval over seeds.\n"
        f"{shares.unknown_last:.1%} of the test histories end with an item no training row holds (first met as the "
        f"validation target), {shares.unknown_last_of_last_targets:.1%} of those whose target is that last item."
    )
    return f"# Test metrics by repeat and new targets: {dataset}\n\n{intro}\n\n{_table(header, rows)}\n"


def _mean_cell(value: tuple[float, float], seeds: int) -> str:
    mean, half = value
    return f"{mean:.4f} ± {half:.4f}" if seeds > 1 else f"{mean:.4f}"


def repeats_main(args, argv: list[str]) -> int:
    shares, report = repeats_report(args.dataset, args.bench_config, args.results, args.data_path, args.k)
    if not report:
        print(f"error: no finished row with rank files for {args.dataset} under {args.results}", file=sys.stderr)
        return 2
    return _write(repeats_markdown(args.dataset, shares, report, args.k, _command(argv)), args.out)


def alignment_main(parser: argparse.ArgumentParser, args, argv: list[str]) -> str:
    runs, num_candidates = [], None
    for checkpoint in args.checkpoint:
        config, model, _, _, valid_data, test_data = load_data_and_model(checkpoint, args.data_path)
        if not getattr(model, "use_ranker", False):
            parser.error(f"{checkpoint} is a {config['model']} without a ranker")
        if num_candidates is None:  # the first checkpoint sets the candidate-set size of the table
            num_candidates = model.num_candidates
            cutoffs = args.cutoffs or [k for k in PAPER_CUTOFFS if k <= num_candidates]
            if not all(1 <= k <= num_candidates for k in cutoffs):
                parser.error(f"--cutoffs must be in [1, {num_candidates}] (num_candidates of {checkpoint})")
        elif model.num_candidates != num_candidates:
            parser.error(
                f"{checkpoint} has num_candidates {model.num_candidates}, the first checkpoint {num_candidates}"
            )
        print(f"alignment: {checkpoint}", flush=True)
        settings = {"gamma": config["gamma"]} | {
            name: getattr(model, name).item() for name in GATES if hasattr(model, name)
        }
        runs.append(
            (checkpoint, settings, alignment_report(model, valid_data if args.split == "valid" else test_data, cutoffs))
        )
    runs.append(("-", {}, {"independent orders (chance)": chance_alignment(num_candidates, cutoffs)}))
    return alignment_markdown(runs, args.split, argv)


def _write(report: str, out: Path | None) -> int:
    print(report)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
