"""Benchmark output: figures with their baselines, as JSON and as a markdown table."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Figure:
    """One measured figure, optionally next to a baseline measured in the same run.

    Attributes:
        measure: What was measured (``"capture: commit → Kafka ack"``).
        value: The figure.
        unit: Its unit (``"changes/s"``, ``"ms"``, ``"MiB"``).
        baseline: The baseline's value, in the same unit.
        baseline_name: What the baseline is.
        target: The target as text (``"ratio ≥ 0.9"``), if there is one.
        met: Whether the target was met (``None``: no target).
    """

    measure: str
    value: float
    unit: str
    baseline: float | None = None
    baseline_name: str | None = None
    target: str | None = None
    met: bool | None = None

    @property
    def ratio(self) -> float | None:
        """``value / baseline``, when there is a baseline."""
        if self.baseline is None or self.baseline == 0:
            return None
        return self.value / self.baseline


@dataclass
class Report:
    """Everything one run produced.

    Attributes:
        run: When, where and how (mode, seed, sizes, machine, services).
        figures: The figures, in table order.
        details: Scenario-specific raw numbers, kept in the JSON only.
        notes: Context for reading the table (printed under it and kept in the JSON).
    """

    run: dict[str, Any]
    figures: list[Figure] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The JSON document (figures carry their ratio)."""
        document: dict[str, Any] = _finite(
            {
                "run": self.run,
                "figures": [{**asdict(f), "ratio": f.ratio} for f in self.figures],
                "details": self.details,
                "notes": self.notes,
            }
        )
        return document

    def markdown(self) -> str:
        """The results table (and a short header naming the run)."""
        run = self.run
        postgres = run.get("postgres", {})
        lines = [
            f"# Benchmark {run.get('date', '')} {run.get('commit', '')} ({run.get('mode', '')})",
            "",
            f"seed {run.get('seed')}, {run.get('cpu_count')} CPUs, Python {run.get('python')}, "
            f"PostgreSQL {postgres.get('version', '?')} (shared_buffers "
            f"{postgres.get('shared_buffers', '?')}, max_wal_size {postgres.get('max_wal_size', '?')}), "
            f"broker: {run.get('broker', '?')}, kafka-python {run.get('kafka_python', '?')} "
            f"(CRC-32C: {run.get('kafka_python_crc32c', '?')})",
            "",
            "| measure | value | baseline | ratio | target |",
            "|---|---|---|---|---|",
        ]
        for figure in self.figures:
            baseline = (
                f"{_number(figure.baseline)} {figure.unit} ({figure.baseline_name})"
                if figure.baseline is not None
                else "—"
            )
            ratio = f"{figure.ratio:.2f}" if figure.ratio is not None else "—"
            target = figure.target or "—"
            if figure.met is not None:
                target += " ✅" if figure.met else " ❌ missed"
            lines.append(
                f"| {figure.measure} | {_number(figure.value)} {figure.unit} | {baseline} | "
                f"{ratio} | {target} |"
            )
        if self.notes:
            lines += ["", *(f"- {note}" for note in self.notes)]
        return "\n".join(lines) + "\n"

    def write(self, directory: Path, stem: str) -> tuple[Path, Path]:
        """Write ``<stem>.json`` and ``<stem>.md`` into ``directory``; return both paths."""
        directory.mkdir(parents=True, exist_ok=True)
        json_path = directory / f"{stem}.json"
        md_path = directory / f"{stem}.md"
        json_path.write_text(json.dumps(self.to_json(), indent=2, default=_jsonable) + "\n")
        md_path.write_text(self.markdown())
        return json_path, md_path


def _number(value: float) -> str:
    if math.isnan(value):
        return "n/a"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _jsonable(value: object) -> Any:
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def _finite(value: Any) -> Any:
    """NaN and infinities become ``null`` (JSON has no such numbers)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value
