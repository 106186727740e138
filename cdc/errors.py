"""Errors raised by capture.

Every error capture raises derives from :class:`CaptureError`; third-party errors (psycopg,
kafka-python) are mapped to the most specific one at the adapter that touches the library, with
``raise ... from exc`` so the cause stays visible::

    CaptureError
    ├── ConfigError          the config file is invalid: names the file, the key path and the problem
    ├── PreflightError       the source database is not ready: names the problem and the fix
    ├── DecodeError          bytes that are not valid pgoutput (or a message we cannot follow)
    ├── EnvelopeError        a change event that is not a valid Debezium envelope
    ├── SourceError          the source database failed while capturing (connection lost, slot gone)
    └── SinkError            the sink did not accept events (broker unreachable, send failed)
"""

from __future__ import annotations


class CaptureError(Exception):
    """Base of every error raised by ``unified_profile.cdc``."""


class ConfigError(CaptureError):
    """The configuration is invalid.

    Attributes:
        file: The config file, or ``None`` when the config did not come from a file.
        problems: ``(key path, problem)`` pairs, e.g. ``("sources[0].tables[1].table", "...")``.
    """

    def __init__(self, file: str | None, problems: list[tuple[str, str]]) -> None:
        self.file = file
        self.problems = problems
        where = file or "<config>"
        lines = [
            f"{where}: {path}: {problem}" if path else f"{where}: {problem}"
            for path, problem in problems
        ]
        super().__init__("invalid configuration\n  " + "\n  ".join(lines))


class PreflightError(CaptureError):
    """The source database cannot be captured as configured.

    Attributes:
        problem: What is wrong, naming the database object.
        fix: What the operator should do about it.
    """

    def __init__(self, problem: str, fix: str) -> None:
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem}\n  fix: {fix}")


class DecodeError(CaptureError):
    """A replication message could not be decoded."""


class EnvelopeError(CaptureError):
    """A change event is not a valid Debezium envelope."""


class SourceError(CaptureError):
    """The source database failed while capturing."""


class SinkError(CaptureError):
    """The sink failed to accept events."""
