"""Garbage-collector settings for the long-running commands (engine, serve, run, cdc).

CPython's cycle collector walks every tracked container object of the generations it collects.
Once a command has started, the objects it set up (modules, configuration, pools, the compiled
mapping) live as long as the process, yet every full collection walked them again. The engine
also allocates a few hundred containers per change event, nearly all freed by reference counting
as the batch ends, so the default first-generation threshold (700) started a collection many
times per batch for little garbage. Measured on the apply benchmark (2 vCPUs), the collector took
about a quarter of the engine's time; with these settings, a few per cent.
"""

from __future__ import annotations

import gc

FIRST_GENERATION_THRESHOLD = 20_000
"""Net container allocations between two young collections (CPython's default is 700)."""


def settle_after_start() -> None:
    """Leave what exists now out of later collections, and collect young objects less often.

    Called once a command has imported and built what it runs with: by ``engine`` and ``cdc``
    before they start work, and by the gRPC server (``serve``, ``run``) once it is up. Objects
    created later are collected as usual; reference cycles among them are found, only later.
    """
    gc.collect()
    gc.freeze()
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(FIRST_GENERATION_THRESHOLD, middle, oldest)
