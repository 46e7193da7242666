"""Shared helpers: percentiles, a results table, and JSON + PNG output under bench/results/."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile; 0 for an empty sample."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(pct / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else 0.0


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A plain-text table for the terminal and the docs."""
    cells = [[_fmt(row.get(col)) for col in columns] for row in rows]
    widths = [max(len(col), *(len(c[i]) for c in cells)) if cells else len(col) for i, col in enumerate(columns)]
    line = "  ".join(col.ljust(w) for col, w in zip(columns, widths, strict=True))
    rule = "  ".join("-" * w for w in widths)
    body = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join([line, rule, *body])


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}"
    return "" if value is None else str(value)


def save(name: str, summary: dict[str, Any], bars: dict[str, float] | None = None, ylabel: str = "") -> Path:
    """Write bench/results/<name>.json and, when bars are given, <name>.png."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    summary = {"benchmark": name, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **summary}
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    if bars:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 3.5))
        ax.bar(list(bars), list(bars.values()), color="#4285f4")
        ax.set_ylabel(ylabel)
        ax.set_title(name)
        for index, value in enumerate(bars.values()):
            ax.annotate(_fmt(float(value)), (index, value), ha="center", va="bottom", fontsize=8)
        fig.tight_layout()
        fig.savefig(RESULTS / f"{name}.png", dpi=110)
        plt.close(fig)
    return path
