"""``python -m recbole_oneranker.recommend``: each user's top-K items from a trained checkpoint, as CSV or JSON.

    python -m recbole_oneranker.recommend --checkpoint saved/RUN.pth --k 10 --out recs.csv   # every user
    python -m recbole_oneranker.recommend --checkpoint saved/RUN.pth --users 1 42 --out recs.json
    python -m recbole_oneranker.recommend --checkpoint saved/RUN.pth --users-file users.txt --keep-seen  # CSV, stdout

Works for the checkpoints of this package's models and of RecBole's sequential models (SASRec, BERT4Rec, ...), saved
by ``run_recbole``. Each user is served from the history the test split gives the model (RecBole's leave-one-out
test row: the last ``MAX_ITEM_LIST_LENGTH`` interactions before the user's last one), as the test metrics were. The
items of that history are left out, as ``--mask_seen_items=True`` leaves them out of the test ranking, unless
``--keep-seen``. An item the user met before the history the model reads (or in the last interaction) may be
recommended: RecBole's dataset object does not keep each user's whole record in every data layout (whole-sequence
training replaces its rows).

One row per recommended item: the user's and the item's original tokens (as in the dataset's files), the rank, the
score the model serves it with and, for a model with a ranking stage (OneRanker), the stage that placed it:
``ranked`` for the ranking stage's candidates, ``retrieved`` for the items below them, in retrieval order.
A progress bar runs on a terminal.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import torch
from recbole.utils import ModelType
from torch import Tensor
from tqdm import tqdm

from recbole_oneranker.checkpoints import load_data_and_model
from recbole_oneranker.evaluator.ranking import mask_seen_items
from recbole_oneranker.quick_start import cpu_threads

RANKED, RETRIEVED = "ranked", "retrieved"


@dataclass(frozen=True)
class UserRecommendations:
    """One user's top-K, best first (fewer than K only when the catalogue runs out of unseen items)."""

    user: str
    items: list[str]
    scores: list[float]
    stages: list[str] | None  # None for a model without a ranking stage

    def rows(self) -> Iterator[dict[str, str | int | float]]:
        for rank, (item, score) in enumerate(zip(self.items, self.scores, strict=True), start=1):
            row: dict[str, str | int | float] = {"user": self.user, "rank": rank, "item": item, "score": score}
            if self.stages is not None:
                row["stage"] = self.stages[rank - 1]
            yield row


def served_scores(model, interaction) -> tuple[Tensor, Tensor | None]:
    """``[B, n_items]`` the order the model serves a batch of requests in, and ``[B, N]`` the candidates its ranking
    stage ordered (None without one): the public ``serve`` of this package's models, else ``full_sort_predict``."""
    if hasattr(model, "serve"):
        served = model.serve(interaction)
        return served.final_scores, served.candidates
    return model.full_sort_predict(interaction).view(len(interaction), -1), None


def top_k(model, interaction, k: int, keep_seen: bool) -> tuple[Tensor, Tensor, Tensor | None]:
    """``([B, K] scores, [B, K] item ids, [B, K] whether the ranking stage placed each item, or None)``; the padding
    item 0 and, unless ``keep_seen``, the items of each row's history come last, at -inf."""
    scores, candidates = served_scores(model, interaction)
    scores = scores.float().clone()  # a model may serve a view of its own tensors
    scores[:, 0] = -math.inf
    if not keep_seen:
        mask_seen_items(scores, interaction[model.ITEM_SEQ])
    top_scores, top_items = scores.topk(min(k, scores.shape[1] - 1), dim=1)
    if candidates is None:
        return top_scores, top_items, None
    ranked = (top_items.unsqueeze(-1) == candidates.unsqueeze(1)).any(-1)
    return top_scores, top_items, ranked


def recommend(
    model, dataset, test_data: Iterable, k: int, users: Tensor | None = None, keep_seen: bool = False
) -> Iterator[UserRecommendations]:
    """The top-``k`` of every user of ``test_data`` (or of the internal ``users`` ids among them), in its order.

    Args:
        model: a trained sequential model in eval mode.
        dataset: the dataset the model was trained on (its token tables).
        test_data: RecBole's full-sort test loader: one row per user, the history before the user's last interaction.
        k: items per user.
        users: ``[U]`` internal user ids to serve; every user when None.
        keep_seen: keep the items of each user's history.
    """
    uid_field, iid_field = dataset.uid_field, dataset.iid_field
    total = test_data.sample_size if users is None else len(users)
    device = next(model.parameters()).device
    with torch.no_grad(), tqdm(total=total, unit="user", file=sys.stderr, disable=None) as progress:
        for interaction, *_ in test_data:
            if users is not None:
                wanted = torch.isin(interaction[uid_field], users)
                if not wanted.any():
                    continue
                interaction = interaction[wanted.nonzero().squeeze(1)]
            interaction = interaction.to(device)
            scores, items, ranked = (
                None if tensor is None else tensor.cpu() for tensor in top_k(model, interaction, k, keep_seen)
            )
            # numpy ids: numpy reads a one-element tensor as a scalar index, a one-user batch as one token
            user_tokens = dataset.id2token(uid_field, interaction[uid_field].cpu().numpy())
            for row, user in enumerate(user_tokens):
                kept = torch.isfinite(scores[row])  # -inf: masked, fewer unseen items than k
                stages = None if ranked is None else [RANKED if r else RETRIEVED for r in ranked[row][kept].tolist()]
                yield UserRecommendations(
                    user=str(user),
                    items=[str(token) for token in dataset.id2token(iid_field, items[row][kept].numpy())],
                    scores=scores[row][kept].tolist(),
                    stages=stages,
                )
            progress.update(len(interaction))


def write_csv(recommendations: Iterable[UserRecommendations], file: TextIO) -> int:
    """One line per recommended item (``user,rank,item,score[,stage]``); returns the number of users written."""
    writer, users = None, 0
    for user in recommendations:
        for row in user.rows():
            if writer is None:
                writer = csv.DictWriter(file, fieldnames=list(row))
                writer.writeheader()
            writer.writerow(row)
        users += 1
    return users


def write_json(recommendations: Iterable[UserRecommendations], file: TextIO) -> int:
    """``[{"user": ..., "items": [{"rank", "item", "score"[, "stage"]}, ...]}, ...]``; returns the number of users."""
    records = [
        {"user": user.user, "items": [{k: v for k, v in row.items() if k != "user"} for row in user.rows()]}
        for user in recommendations
    ]
    json.dump(records, file, indent=1)
    file.write("\n")
    return len(records)


def user_ids(dataset, tokens: Sequence[str], parser: argparse.ArgumentParser) -> Tensor:
    """``[U]`` the internal ids of the user ``tokens``; an unknown token is a usage error."""
    known = dataset.field2token_id[dataset.uid_field]
    unknown = [token for token in tokens if token not in known]
    if unknown:
        parser.error(f"unknown user(s) in {dataset.dataset_name}: {' '.join(unknown[:10])}")
    return torch.tensor(sorted({known[token] for token in tokens}), dtype=torch.long)


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, argparse.ArgumentParser]:
    parser = argparse.ArgumentParser(prog="python -m recbole_oneranker.recommend", description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True, help="a checkpoint saved by run_recbole (saved/<run_id>.pth)")
    who = parser.add_mutually_exclusive_group()
    who.add_argument("--users", nargs="+", metavar="USER", help="user tokens as in the dataset (default: every user)")
    who.add_argument("--users-file", type=Path, help="a file of user tokens, one per line")
    parser.add_argument("--k", type=int, default=10, help="items per user (default: 10)")
    parser.add_argument("--out", type=Path, help="recs.csv or recs.json (by its suffix; default: CSV on stdout)")
    parser.add_argument("--keep-seen", action="store_true", help="keep the items of each user's history")
    parser.add_argument("--data-path", help="folder holding <dataset>/ (default: the one it was trained from)")
    args = parser.parse_args(argv)
    if args.k < 1:
        parser.error("--k must be at least 1")
    if not Path(args.checkpoint).is_file():
        parser.error(f"no checkpoint at {args.checkpoint}")
    if args.users_file is not None and not args.users_file.is_file():
        parser.error(f"no users file at {args.users_file}")
    return args, parser


def main(argv: Sequence[str] | None = None) -> int:
    args, parser = parse_args(argv)
    config, model, dataset, _, _, test_data = load_data_and_model(args.checkpoint, args.data_path)
    torch.set_num_threads(cpu_threads(config)[0])  # as a run: the idle cores unless told otherwise
    if config["MODEL_TYPE"] != ModelType.SEQUENTIAL:
        parser.error(f"{config['model']} is not a sequential model: recommend serves sequential models only")
    tokens = args.users_file.read_text().split() if args.users_file else args.users
    users = None if tokens is None else user_ids(dataset, tokens, parser)
    recommendations = recommend(model, dataset, test_data, args.k, users, args.keep_seen)
    write = write_json if args.out is not None and args.out.suffix == ".json" else write_csv
    if args.out is None:
        written = write(recommendations, sys.stdout)
    else:
        with args.out.open("w", newline="") as file:
            written = write(recommendations, file)
    if users is not None and written < len(users):
        missing = len(users) - written
        print(f"recommend: {missing} of the users have no test row (too few interactions)", file=sys.stderr)
    if args.out is not None:
        print(f"recommend: top-{args.k} of {written} users of {config['dataset']} -> {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
