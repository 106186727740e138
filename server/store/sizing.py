"""Whether the store's PostgreSQL can keep the store's indexes in its own cache.

Every applied change probes the identifier, record and profile indexes. When they outgrow
``shared_buffers`` (128 MB unless configured), most probes copy a page in from the kernel's
cache: measured on a 1,000,000-profile store, PostgreSQL's defaults cost 22-65 % more of its CPU
per applied change and 18-33 % fewer changes per second than a quarter of the machine's memory
(README, "Running in production"). The commands check once at start and warn, so whoever runs
the service learns it from the log rather than from a slow engine.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine, text

from . import schema

_MIB = 1024 * 1024

# The tables every applied change probes by key. The change log is left out: it only grows at
# its end, and history reads touch one profile's entries, so its older pages may stay cold.
_PROBED_TABLES = tuple(
    table.name
    for table in (
        schema.source_records,
        schema.record_identifiers,
        schema.profiles,
        schema.profile_aliases,
        schema.link_overrides,
    )
)

_SIZES = text(
    """
    SELECT pg_size_bytes(current_setting('shared_buffers')),
           coalesce(sum(pg_indexes_size(to_regclass(t.name))), 0)
    FROM unnest(CAST(:tables AS text[])) AS t(name)
    """
)


@dataclass(frozen=True, slots=True)
class StoreSizing:
    """The indexes every applied change probes, against the server's ``shared_buffers``."""

    shared_buffers_bytes: int
    index_bytes: int

    @property
    def undersized(self) -> bool:
        """The indexes do not fit in ``shared_buffers``."""
        return self.index_bytes > self.shared_buffers_bytes

    @property
    def index_mib(self) -> int:
        """The indexes' size in whole MiB."""
        return self.index_bytes // _MIB

    @property
    def shared_buffers_mib(self) -> int:
        """``shared_buffers`` in whole MiB."""
        return self.shared_buffers_bytes // _MIB

    def advice(self) -> str:
        """What the operator should change (meant for an undersized store)."""
        return (
            f"the store's indexes ({self.index_mib} MiB) do not fit in the store "
            f"server's shared_buffers ({self.shared_buffers_mib} MiB), so applying "
            "and reading profiles copy most index pages in from the operating system's cache; "
            "give shared_buffers about a quarter of the server's memory and max_wal_size "
            "several GB (README: Running in production, Store)"
        )


def measure(engine: Engine) -> StoreSizing:
    """The probed tables' index sizes and the server's ``shared_buffers``, from PostgreSQL."""
    with engine.connect() as connection:
        row = connection.execute(_SIZES, {"tables": list(_PROBED_TABLES)}).one()
    return StoreSizing(int(row[0]), int(row[1]))


__all__ = ["StoreSizing", "measure"]
