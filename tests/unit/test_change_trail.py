"""The debug trail of an applied change: keys and positions from source to sequence, no values."""

from __future__ import annotations

from typing import Any

from unified_profile.server.ingest import pipeline
from unified_profile.server.ingest.pipeline import _log_changes
from unified_profile.server.store.rows import ChangeRow


class _Recorder:
    """Stands in for the module's logger (whose level the process configured once)."""

    def __init__(self) -> None:
        self.lines: list[dict[str, Any]] = []

    def debug(self, event: str, **fields: Any) -> None:
        self.lines.append({"event": event, "log_level": "debug", **fields})


def _cause(key: str, position: int) -> dict[str, object]:
    return {
        "source": "crm",
        "table": "crm.customers",
        "key": {"id": key},
        "op": "u",
        "lsn": position,
        "commit_time_us": 1,
        "stream": "kafka:crm.crm.customers:1",
        "position": position,
    }


def test_each_change_names_its_sequence_profile_and_every_cause(monkeypatch):
    changes = [
        ChangeRow("p_a", "UPDATED", {"contact.email": {"old": "a@x.example", "new": "b@x.example"}},
                  {}, [_cause("1", 40)]),
        ChangeRow("p_b", "MERGED", {}, {"merged": "p_c"}, [_cause("2", 41), _cause("3", 42)]),
    ]
    recorder = _Recorder()
    monkeypatch.setattr(pipeline, "log", recorder)
    _log_changes(changes, head=12)
    logs = recorder.lines
    trail = [(e["sequence"], e["profile_id"], e["kind"], e["key"], e["position"], e["stream"])
             for e in logs]
    assert trail == [
        (11, "p_a", "UPDATED", {"id": "1"}, 40, "kafka:crm.crm.customers:1"),
        (12, "p_b", "MERGED", {"id": "2"}, 41, "kafka:crm.crm.customers:1"),
        (12, "p_b", "MERGED", {"id": "3"}, 42, "kafka:crm.crm.customers:1"),
    ]
    assert all(e["event"] == "ingest.change_applied" for e in logs)
    # Field values (personal data) never reach the log.
    assert "a@x.example" not in repr(logs) and "b@x.example" not in repr(logs)
