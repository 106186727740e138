"""``unified-profile reconcile``: the daily consistency check between the sources and the store.

Every source row is read (one REPEATABLE READ snapshot per source) and mapped exactly as ingest
maps it; the image is compared with the stored one. Drift is reported per table:

- **missing**: a live source row the store does not hold (or holds as deleted);
- **stale**: the store holds the row with other fields, identifiers, version or deleted flag;
- **orphaned**: the store holds a live record whose source row is gone;
- **profile drift**: a stored profile differs from a recompute over its own stored records.

``--repair`` re-syncs what drifted through the normal apply path (so links, profiles and the change
log follow, and subscribers see the corrections).
"""
