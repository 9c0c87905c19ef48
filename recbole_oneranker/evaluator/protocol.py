"""How a result was measured, as a value: printed with every run, stored with every results row, and rendered as
the line that heads every results table."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

SPLIT_NAMES = {"LS": "leave-one-out", "RS": "random split", "TS": "time split"}


@dataclass(frozen=True)
class Protocol:
    """The evaluation protocol of a run.

    Attributes:
        split: RecBole's ``eval_args.split``, e.g. ``{"LS": "valid_and_test"}``.
        ranking: RecBole's test mode: ``full``, or ``uniN`` / ``popN`` (the target among N sampled negatives).
        n_items: items of the dataset, the padding item 0 included (RecBole's ``item_num``).
        mask_seen_items: whether full ranking removes the items of the user's history (HSTU's protocol).
        candidate_negatives: negatives of the candidate-set protocol run after the test (0: none).
        candidate_sampling: how those negatives are drawn: ``uniform`` or ``popularity``.
        whole_sequence: one training row per user with a loss at every position (else one row per prefix).
        whole_sequence_windows: whole-sequence training on every window of the history (else the last one only).
        value_field: the column GMV@K reads (None: no value).
        value_note: what that value is (e.g. a proxy for a price).
    """

    split: dict[str, Any]
    ranking: str
    n_items: int
    mask_seen_items: bool = False
    candidate_negatives: int = 0
    candidate_sampling: str = "uniform"
    whole_sequence: bool = False
    whole_sequence_windows: bool = True
    value_field: str | None = None
    value_note: str | None = None

    @classmethod
    def of(cls, config, dataset) -> Protocol:
        """The protocol of a run with ``config`` on ``dataset``."""
        return cls(
            split=dict(config["eval_args"]["split"]),
            ranking=config["eval_args"]["mode"]["test"],
            n_items=dataset.item_num,
            mask_seen_items=bool(config["mask_seen_items"]),
            candidate_negatives=int(config["candidate_negatives"] or 0),
            candidate_sampling=config["candidate_sampling"],
            whole_sequence=bool(config["whole_sequence"]),
            whole_sequence_windows=bool(config["whole_sequence_windows"]),
            value_field=config["value_field"] or None,
            value_note=config["value_note"] or None,
        )

    def fields(self) -> dict[str, Any]:
        """The protocol as plain values (a results row stores them as JSON; ``Protocol(**fields)`` is it again)."""
        return asdict(self)

    def parts(self) -> list[str]:
        """The protocol's statements, e.g. ``["leave-one-out (valid_and_test)", "full ranking over all 1,682
        items", "seen items kept (RecBole default)"]``; a results table states the parts its rows share once."""
        ((mode, args),) = self.split.items()
        parts = [f"{SPLIT_NAMES.get(mode, mode)} ({args})", self._ranking_text()]
        if self.ranking == "full":
            parts.append("seen items masked (HSTU)" if self.mask_seen_items else "seen items kept (RecBole default)")
        if self.candidate_negatives:
            sampled = "uniform" if self.candidate_sampling == "uniform" else f"{self.candidate_sampling}-sampled"
            parts.append(f"candidate set: target + {self.candidate_negatives} {sampled} negatives")
        if self.whole_sequence:
            parts.append("whole-sequence training" + ("" if self.whole_sequence_windows else " (last window only)"))
        if self.value_field:
            parts.append(f"value = {self.value_field}" + (f": {self.value_note}" if self.value_note else ""))
        return parts

    def render(self) -> str:
        """E.g. ``leave-one-out (valid_and_test), full ranking over all 1,682 items, seen items kept (RecBole
        default)``: the line every run prints and every results table names."""
        return ", ".join(self.parts())

    def _ranking_text(self) -> str:
        if self.ranking == "full":
            return f"full ranking over all {self.n_items - 1:,} items"
        if self.ranking.startswith(("uni", "pop")):
            sampling = "uniform" if self.ranking.startswith("uni") else "popularity"
            return f"target + {self.ranking[3:]} {sampling}-sampled negatives"
        return f"ranking mode {self.ranking}"
