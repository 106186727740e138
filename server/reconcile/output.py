"""The reconciliation report as an operator reads it."""

from __future__ import annotations

from .drift import Report

_EXAMPLES = 5


def as_table(report: Report) -> str:
    """A table per source table, a few example keys per kind of drift, then the profiles."""
    header = ("source", "table", "rows", "missing", "stale", "orphaned", "unmappable")
    rows = [header] + [
        (
            t.source,
            t.table,
            str(t.source_rows),
            str(t.count("missing")),
            str(t.count("stale")),
            str(t.count("orphaned")),
            str(len(t.unmappable)),
        )
        for t in report.tables
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    for table in report.tables:
        for drift in table.drift[:_EXAMPLES]:
            what = f" ({', '.join(drift.differences)})" if drift.differences else ""
            lines.append(f"  {drift.kind}: {table.source} {table.table} {drift.key.key}{what}")
        if len(table.drift) > _EXAMPLES:
            lines.append(f"  … and {len(table.drift) - _EXAMPLES} more ({table.table}; --json lists all)")
        for key, reason in table.unmappable[:_EXAMPLES]:
            lines.append(f"  unmappable: {table.source} {table.table} {key}: {reason}")
    lines.append(
        f"profiles checked: {report.profiles_checked}, drifted: {len(report.profile_drift)}"
    )
    for drifted in report.profile_drift[:_EXAMPLES]:
        lines.append(f"  profile {drifted.profile_id}: {', '.join(drifted.paths)}")
    lines.append("drift found" if report.drifted else "no drift")
    return "\n".join(lines)
