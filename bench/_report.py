"""What every side-by-side benchmark of issue 8 prints and saves: a header, one Markdown table, a JSON file."""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def load_average() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "python": platform.python_version(),
            "cpus": os.cpu_count(), "cpu": cpu}


def header(title: str, started_load: list[float], quick: bool) -> str:
    # Other processes on a 2-core machine move every figure: the load average says how busy it was.
    info = machine()
    return (f"{title} | {info['date']} | {info['cpus']} logical CPUs ({info['cpu']}) | Python {info['python']}"
            f"{' | --quick' if quick else ''} | load average 1/5/15 min at start {started_load}, at end {load_average()}")


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation between closest ranks."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def ratio(value: float | None, peer: float | None) -> float | None:
    if value is None or peer is None or peer == 0 or math.isnan(value) or math.isnan(peer):
        return None
    return value / peer


def fmt(value: float | None, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:,.{digits}f}"


def fmt_ratio(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}x"


def fmt_rounds(rounds: Sequence[float]) -> str:
    """The median of side-by-side rounds' ratios, with their quartiles (from two rounds on)."""
    if len(rounds) < 2:
        return fmt_ratio(statistics.median(rounds))
    low, _, high = statistics.quantiles(rounds, n=4, method="inclusive")
    return f"{fmt_ratio(statistics.median(rounds))} ({low:.2f}-{high:.2f})"


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """The two first columns left-aligned (they name the row and its peer), the figures right-aligned, the last
    (a note) left-aligned."""
    lines = ["| " + " | ".join(columns) + " |", "|---|---|" + "---:|" * (len(columns) - 3) + "---|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def write_json(name: str, payload: dict[str, Any], out: Path | None = None) -> Path:
    path = out or RESULTS_DIR / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"benchmark": name, **machine(), **payload}, indent=2, default=str) + "\n")
    return path


@dataclass
class Row:
    """One line of a side-by-side table: a figure of trainserve's and the same figure of its peer."""

    measured: str  # what, on which stack, in which unit
    value: float | None
    peer: str
    peer_value: float | None
    unit: str = ""  # of the difference column
    digits: int = 1
    note: str = ""
    # When value and peer ran side by side in rounds: each round's ratio. The row's ratio is then their median (a
    # slow spell of the machine moves both sides of a round, not one side of the ratio), shown with its quartiles.
    rounds: Sequence[float] | None = None

    @property
    def ratio(self) -> float | None:
        if self.rounds:
            return statistics.median(self.rounds)
        return ratio(self.value, self.peer_value)

    @property
    def ratio_cell(self) -> str:
        return fmt_ratio(self.ratio) if not self.rounds else fmt_rounds(self.rounds)

    def cells(self) -> list[str]:
        difference = None if self.value is None or self.peer_value is None else self.value - self.peer_value
        shown = "–" if difference is None else f"{difference:+,.{self.digits}f} {self.unit}".rstrip()
        return [self.measured, self.peer, fmt(self.value, self.digits), fmt(self.peer_value, self.digits),
                self.ratio_cell, shown, self.note]

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": self.ratio}


ROW_COLUMNS = ("measured", "peer", "value", "peer value", "ratio", "difference", "note")


def rows_table(rows: Sequence[Row]) -> str:
    return markdown_table(ROW_COLUMNS, [row.cells() for row in rows])
