"""What every benchmark scenario receives and returns (capture, apply; reads, fan-out later)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .report import Figure
from .services import Services


@dataclass(frozen=True)
class Context:
    """One run's shared settings.

    Attributes:
        services: The database and broker.
        run_id: Short lowercase hex id; scenarios put it in slot, table and topic names.
        seed: Seed of every workload.
        quick: Smoke-run sizes instead of the full ones.
    """

    services: Services
    run_id: str
    seed: int
    quick: bool


@dataclass
class ScenarioResult:
    """A scenario's figures (for the table), notes (under it) and raw numbers (for the JSON)."""

    figures: list[Figure] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


Scenario = Callable[[Context], ScenarioResult]
