"""The service's configuration: the whole TOML file, validated once, all problems at once.

Each component validates its own sections (capture: ``[transport]`` and ``[[sources]]``; the
engine's mapping: the tables' mapping keys and ``[identity.*]``); this module adds ``[store]`` and
``[rules]``, ``[engine]`` and ``[grpc]`` and gathers every problem of the file into one
:class:`ConfigError`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from unified_profile.cdc.config import (
    CaptureConfig,
    parse_capture_config,
    read_config_file,
    validation_problems,
)
from unified_profile.cdc.errors import ConfigError

from .engine.mapping_config import MappingConfig, parse_mapping_config
from .engine.survivorship import RULE_KINDS, Rule, RuleSet, default_rules
from .metrics import MetricsConfig
from .rpc.settings import GrpcConfig

_KNOWN_SECTIONS = {
    "store", "transport", "sources", "identity", "rules", "grpc", "engine", "metrics"
}


class StoreConfig(BaseModel):
    """``[store]``: the PostgreSQL database holding profiles, links, change log and offsets."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dsn: str


class EngineConfig(BaseModel):
    """``[engine]``: how the engine applies events."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    batch_events: int = Field(default=2_000, ge=1, le=100_000)


class _RuleConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    rule: str
    order: list[str] = Field(default_factory=list)

    @field_validator("rule")
    @classmethod
    def _known(cls, value: str) -> str:
        if value not in RULE_KINDS:
            raise ValueError(f"unknown rule {value!r}; expected one of {', '.join(RULE_KINDS)}")
        return value


class _RulesSection(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    default: str | _RuleConfig = "last_writer_wins"


@dataclass(frozen=True)
class ServiceConfig:
    """Everything the service reads from its config file."""

    file: str
    capture: CaptureConfig
    mapping: MappingConfig
    rules: RuleSet
    store: StoreConfig
    engine: EngineConfig
    grpc: GrpcConfig = field(default_factory=GrpcConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)


def load_service_config(path: str | Path) -> ServiceConfig:
    """Read and validate the whole config file.

    Raises:
        ConfigError: Every problem in the file, each with its key path.
    """
    return parse_service_config(read_config_file(path), str(path))


def parse_service_config(data: dict[str, Any], file: str | None = None) -> ServiceConfig:
    """Validate already-read config data (``env:`` references resolved).

    Raises:
        ConfigError: Every problem in the data, each with its key path.
    """
    problems: list[tuple[str, str]] = [
        (key, "unknown section (check its spelling and the README's configuration reference)")
        for key in data
        if key not in _KNOWN_SECTIONS
    ]
    capture = mapping = rules = store = engine = grpc = metrics = None
    try:
        capture = parse_capture_config(data, file)
    except ConfigError as exc:
        problems += exc.problems
    try:
        mapping = parse_mapping_config(data, file)
    except ConfigError as exc:
        problems += [p for p in exc.problems if p not in problems]
    try:
        store = StoreConfig.model_validate(data.get("store", {}))
    except ValidationError as exc:
        problems += [(f"store.{k}" if k else "store", m) for k, m in validation_problems(exc)]
    try:
        engine = EngineConfig.model_validate(data.get("engine", {}))
    except ValidationError as exc:
        problems += [(f"engine.{k}" if k else "engine", m) for k, m in validation_problems(exc)]
    try:
        grpc = GrpcConfig.model_validate(data.get("grpc", {}))
    except ValidationError as exc:
        problems += [(f"grpc.{k}" if k else "grpc", m) for k, m in validation_problems(exc)]
    try:
        metrics = MetricsConfig.model_validate(data.get("metrics", {}))
    except ValidationError as exc:
        problems += [
            (f"metrics.{k}" if k else "metrics", m) for k, m in validation_problems(exc)
        ]
    try:
        rules = parse_rules(data.get("rules"))
    except _RulesProblem as exc:
        problems.append((exc.path, exc.message))
    if problems:
        raise ConfigError(file, problems)
    assert capture and mapping and rules and store and engine and grpc and metrics
    return ServiceConfig(
        file or "<config>", capture, mapping, rules, store, engine, grpc, metrics
    )


class _RulesProblem(Exception):
    def __init__(self, path: str, message: str) -> None:
        super().__init__(message)
        self.path = path
        self.message = message


def parse_rules(section: Any) -> RuleSet:
    """``[rules]`` → a :class:`RuleSet` (the documented defaults when absent)."""
    if section is None:
        return default_rules()
    if not isinstance(section, dict):
        raise _RulesProblem("rules", "must be a table of field path patterns")
    try:
        default = _rule(section.get("default", "last_writer_wins"))
    except (ValidationError, ValueError) as exc:
        raise _RulesProblem("rules.default", _message(exc)) from None
    patterns: list[tuple[str, Rule]] = []
    for pattern, spec in section.items():
        if pattern == "default":
            continue
        try:
            patterns.append((pattern, _rule(spec)))
        except (ValidationError, ValueError) as exc:
            raise _RulesProblem(f'rules."{pattern}"', _message(exc)) from None
    try:
        return RuleSet(default=default, patterns=tuple(patterns))
    except ValueError as exc:
        raise _RulesProblem("rules", str(exc)) from None


def _rule(spec: Any) -> Rule:
    if isinstance(spec, str):
        spec = {"rule": spec}
    parsed = _RuleConfig.model_validate(spec)
    return Rule(parsed.rule, tuple(parsed.order))  # type: ignore[arg-type]


def _message(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(m for _, m in validation_problems(exc))
    return str(exc)
