"""One line that says how a result was measured; printed with every run and written in every results header."""

from __future__ import annotations

from typing import Any


def _split_text(split: dict[str, Any]) -> str:
    ((mode, args),) = split.items()
    names = {"LS": "leave-one-out", "RS": "random split", "TS": "time split"}
    return f"{names.get(mode, mode)} ({args})"


def _ranking_text(mode: str, n_items: int) -> str:
    if mode == "full":
        return f"full ranking over all {n_items - 1:,} items"
    if mode.startswith(("uni", "pop")):
        return f"target + {mode[3:]} {'uniform' if mode.startswith('uni') else 'popularity'}-sampled negatives"
    return f"ranking mode {mode}"


def describe_protocol(config, dataset) -> str:
    """E.g. ``leave-one-out (valid_and_test), full ranking over all 1,682 items, seen items kept (RecBole default)``."""
    eval_args = config["eval_args"]
    parts = [_split_text(eval_args["split"]), _ranking_text(eval_args["mode"]["test"], dataset.item_num)]
    if eval_args["mode"]["test"] == "full":
        parts.append("seen items masked (HSTU)" if config["mask_seen_items"] else "seen items kept (RecBole default)")
    if config["candidate_negatives"]:
        sampled = "uniform" if config["candidate_sampling"] == "uniform" else f"{config['candidate_sampling']}-sampled"
        parts.append(f"candidate set: target + {config['candidate_negatives']} {sampled} negatives")
    if config["whole_sequence"]:
        parts.append("whole-sequence training" + ("" if config["whole_sequence_windows"] else " (last window only)"))
    if config["value_field"]:
        note = f": {config['value_note']}" if config["value_note"] else ""
        parts.append(f"value = {config['value_field']}{note}")
    return ", ".join(parts)


def protocol_parts(protocol: str) -> list[str]:
    """The parts :func:`describe_protocol` joined: a comma inside brackets or in the value note, which is always
    the last part, does not split."""
    parts, depth, start = [], 0, 0
    for index, char in enumerate(protocol):
        depth += (char in "([") - (char in ")]")
        if protocol.startswith(", ", index) and depth == 0:
            parts.append(protocol[start:index])
            start = index + 2
            if protocol.startswith("value = ", start):
                break
    return parts + [protocol[start:]]
