"""Profile documents list each contributing record once and refer to it from every field.

Before, every field of ``up_profiles.fields`` carried its own copies of its provenance entries::

    {path: {"value": v, "provenance": [{"source", "table", "record_key", "version",
                                        "commit_time_us", "rule"}, ...]}}

which made a typical profile about four times the size of its values and sources. After
(``server/store/profile_document.py``)::

    {"values": {path: v}, "provenance": {path: [index, ...]},
     "contributors": [[source, table, record_key, version, commit_time_us, rule], ...]}

with contributors sorted as the engine sorts them (source, table, record key, rule in code point
order; then version, a missing one first, and commit time), so a converted document is the one
the engine would write.

Rewrites every profile row in one statement: stop the engine and the server while it runs.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_EMPTY = '{"values": {}, "provenance": {}, "contributors": []}'

_UPGRADE = """
WITH entries AS (
    SELECT p.profile_id, f.key AS path, f.value -> 'value' AS value, e.ord,
           CASE WHEN e.entry IS NOT NULL THEN jsonb_build_array(
               e.entry -> 'source', e.entry -> 'table', e.entry -> 'record_key',
               e.entry -> 'version', e.entry -> 'commit_time_us', e.entry -> 'rule')
           END AS contributor
    FROM up_profiles p
    CROSS JOIN LATERAL json_each(p.fields) AS f
    LEFT JOIN LATERAL json_array_elements(f.value -> 'provenance') WITH ORDINALITY AS e(entry, ord)
        ON true
),
contributors AS (
    SELECT profile_id, contributor,
           row_number() OVER (
               PARTITION BY profile_id
               ORDER BY (contributor ->> 0) COLLATE "C", (contributor ->> 1) COLLATE "C",
                        (contributor ->> 2) COLLATE "C", (contributor ->> 5) COLLATE "C",
                        (contributor ->> 3)::numeric NULLS FIRST, (contributor ->> 4)::numeric
           ) - 1 AS index
    FROM (SELECT DISTINCT profile_id, contributor FROM entries WHERE contributor IS NOT NULL) d
),
fields AS (
    SELECT e.profile_id, e.path, (array_agg(e.value))[1] AS value,
           coalesce(json_agg(c.index ORDER BY e.ord) FILTER (WHERE c.index IS NOT NULL), '[]')
               AS provenance
    FROM entries e
    LEFT JOIN contributors c ON c.profile_id = e.profile_id AND c.contributor = e.contributor
    GROUP BY e.profile_id, e.path
),
documents AS (
    SELECT f.profile_id, json_build_object(
        'values', json_object_agg(f.path, f.value ORDER BY f.path),
        'provenance', json_object_agg(f.path, f.provenance ORDER BY f.path),
        'contributors', coalesce(
            (SELECT json_agg(c.contributor ORDER BY c.index)
             FROM contributors c WHERE c.profile_id = f.profile_id),
            '[]')
    ) AS document
    FROM fields f
    GROUP BY f.profile_id
)
UPDATE up_profiles p SET fields = d.document FROM documents d WHERE d.profile_id = p.profile_id
"""

_DOWNGRADE = """
UPDATE up_profiles p SET fields = coalesce((
    SELECT json_object_agg(v.key, json_build_object(
        'value', v.value,
        'provenance', coalesce((
            SELECT json_agg(json_build_object(
                'source', c -> 0, 'table', c -> 1, 'record_key', c -> 2,
                'version', c -> 3, 'commit_time_us', c -> 4, 'rule', c -> 5) ORDER BY i.ord)
            FROM json_array_elements_text(p.fields -> 'provenance' -> v.key)
                WITH ORDINALITY AS i(index, ord)
            CROSS JOIN LATERAL (SELECT p.fields -> 'contributors' -> i.index::int) AS x(c)
        ), '[]')
    ) ORDER BY v.key)
    FROM json_each(p.fields -> 'values') AS v
), '{}')
"""


def upgrade() -> None:
    op.execute(_UPGRADE)
    # A profile without fields has no rows in the conversion's join: still ``{}``.
    op.execute(f"UPDATE up_profiles SET fields = '{_EMPTY}' WHERE fields::jsonb = '{{}}'")


def downgrade() -> None:
    op.execute(_DOWNGRADE)
