"""Fuzzing what comes from outside: Kafka records, their row values, config files.

Each either works or fails with its own clear error (``EnvelopeError``, ``MappingFailed``,
``ConfigError``); anything else (a ``KeyError`` deep inside, an ``AttributeError`` on a list where a
dict was expected) is a bug that would surface as "malformed event" at best.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from unified_profile.cdc.config import read_config_file
from unified_profile.cdc.envelope import DecodedEvent, decode_event
from unified_profile.cdc.errors import ConfigError, EnvelopeError
from unified_profile.server.config import ServiceConfig, parse_service_config
from unified_profile.server.engine.mapping_config import parse_mapping_config
from unified_profile.server.engine.records import SourceRecord
from unified_profile.server.ingest.mapper import ConfiguredMapper
from unified_profile.server.ingest.pipeline import MappingFailed, TableTruncated

DEMO = Path(__file__).resolve().parents[2] / "examples" / "demo" / "unified-profile.toml"
TOPIC = "crm.crm.customers"
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)

SOURCE = {
    "version": "3.0.0.Final",
    "connector": "postgresql",
    "name": "crm",
    "ts_ms": 1737999999000,
    "snapshot": "false",
    "db": "crm",
    "schema": "crm",
    "table": "customers",
    "txId": 7,
    "lsn": 23893952,
}
ROW = {
    "id": 7,
    "first_name": "Sally",
    "last_name": "Smith",
    "email": "Sally.Smith@example.com",
    "birth_date": 5945,
    "owner_email": "alice@crm.example",
    "lifecycle_stage": "customer",
    "created_at": "2024-01-02T03:04:05Z",
    "updated_at": "2025-01-27T17:46:39.123456Z",
    "deleted_at": None,
}


def _without_env(value: Any) -> Any:
    """The config with every ``env:`` reference replaced by a literal (no environment needed)."""
    if isinstance(value, dict):
        return {k: _without_env(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_env(v) for v in value]
    if isinstance(value, str) and value.startswith("env:"):
        return "dbname=fuzz" if value.endswith("DSN") else "fuzz-token-0123456789abcdef"
    return value


DEMO_DATA = _without_env(tomllib.loads(DEMO.read_text()))
MAPPER = ConfiguredMapper(parse_mapping_config(DEMO_DATA, str(DEMO)))


def _decoded_or_envelope_error(key: bytes | None, value: bytes | None) -> DecodedEvent | None:
    try:
        return decode_event(TOPIC, key, value)
    except EnvelopeError:
        return None


def _mapped_or_mapping_failed(event: DecodedEvent) -> None:
    try:
        record = MAPPER.map_event(event)
    except MappingFailed as exc:
        assert str(exc)  # says what is wrong
        return
    assert record is None or isinstance(record, SourceRecord | TableTruncated)


@FUZZ
@given(key=st.none() | st.binary(max_size=40), value=st.none() | st.binary(max_size=200))
def test_arbitrary_bytes_decode_or_raise_envelope_error(key, value):
    event = _decoded_or_envelope_error(key, value)
    if event is not None:
        _mapped_or_mapping_failed(event)


@FUZZ
@given(key=JSON, value=JSON)
def test_arbitrary_json_decodes_or_raises_envelope_error(key, value):
    event = _decoded_or_envelope_error(json.dumps(key).encode(), json.dumps(value).encode())
    if event is not None:
        _mapped_or_mapping_failed(event)


@FUZZ
@given(
    replaced=st.dictionaries(st.sampled_from(["op", "before", "after", "source", "ts_ms"]), JSON),
    source=st.dictionaries(st.sampled_from(sorted(SOURCE)), JSON, max_size=3),
    row=st.dictionaries(st.sampled_from(sorted(ROW)), JSON, max_size=4),
    op=st.sampled_from(["c", "u", "d", "r", "t"]),
)
def test_a_debezium_event_with_parts_replaced_decodes_and_maps_or_fails_clearly(
    replaced, source, row, op
):
    payload: dict[str, Any] = {
        "before": None,
        "after": {**ROW, **row},
        "source": {**SOURCE, **source},
        "op": op,
        "ts_ms": 1737999999500,
        **replaced,
    }
    event = _decoded_or_envelope_error(json.dumps({"id": 7}).encode(), json.dumps(payload).encode())
    if event is not None:
        _mapped_or_mapping_failed(event)


@FUZZ
@given(st.text(max_size=300))
def test_arbitrary_config_text_reads_or_raises_config_error(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("fuzz") / "config.toml"
    path.write_text(text)
    try:
        data = read_config_file(path)
    except ConfigError as exc:
        assert str(path) in str(exc)
        return
    _parsed_or_config_error(data)


def _parsed_or_config_error(data: dict[str, Any]) -> None:
    try:
        config = parse_service_config(data, "fuzz.toml")
    except ConfigError as exc:
        assert exc.problems and all(message for _, message in exc.problems)
        return
    assert isinstance(config, ServiceConfig)


_SECTIONS = sorted(DEMO_DATA)


@FUZZ
@given(
    section=st.sampled_from(_SECTIONS),
    value=JSON,
    inner=st.one_of(st.none(), st.text(max_size=12)),
)
def test_the_demo_config_with_a_section_or_key_replaced_parses_or_raises_config_error(
    section, value, inner
):
    data = json.loads(json.dumps(DEMO_DATA))  # a deep copy
    target = data[section]
    if inner is None or not isinstance(target, dict):
        data[section] = value
    elif isinstance(target, dict):
        key = inner if inner not in target or not target else sorted(target)[len(inner) % len(target)]
        target[key] = value
    _parsed_or_config_error(data)
