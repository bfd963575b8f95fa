"""Setups measured in interleaved rounds, folded into one row per setup."""

from __future__ import annotations

import statistics
from typing import Any


def rounds_row(
    done: list[dict[str, Any]], medians: tuple[str, ...], sums: tuple[str, ...]
) -> dict[str, Any]:
    """One setup's rounds as one row: medians of the figures, totals of the counts."""
    row: dict[str, Any] = {"rounds": len(done)}
    for key in medians:
        row[key] = round(statistics.median(r[key] for r in done), 3)
    for key in sums:
        row[key] = sum(r[key] for r in done)
    row["seconds"] = round(sum(r["seconds"] for r in done), 2)
    return row


def paired_ratio(numerator: list[float], denominator: list[float]) -> float:
    """The median of run-by-run ratios: each run divided by the run of the same round.

    Setups take turns, so the two runs of a round saw the same state of the machine;
    dividing within a round cancels slow drifts that a ratio of medians would keep.
    """
    return statistics.median(a / b for a, b in zip(numerator, denominator, strict=True))
