"""The one-machine demo (``make demo``): seeded people, simulated traffic, a live view.

* :mod:`.people` — a seeded population of a CRM and a loyalty platform (overlap, typos, household
  emails, people in one system only): :func:`generate_population`.
* :mod:`.traffic` — what those people do, as SQL transactions: :class:`TrafficModel`.
* :mod:`.seeding` — the example schema, its hand-written people and a population, into the
  databases.
* :mod:`.simulator` — a thread committing the traffic at a steady rate: :class:`Simulator`.
* :mod:`.live_view` — the change stream and a summary line in the terminal: :class:`LiveView`.
* :mod:`.stack` — PostgreSQL, Tansu and ``unified-profile run``, started and stopped in order.
* :mod:`.run` — ``python -m unified_profile.server.demo`` itself.

People and traffic are pure and reproducible from their seeds, so tests and benchmarks can share
the workload. Needs the ``devstack`` extra.
"""

from .people import Match, Person, Population, generate_population
from .traffic import Activity, ActivityKind, TrafficModel, Transaction

__all__ = [
    "Activity",
    "ActivityKind",
    "Match",
    "Person",
    "Population",
    "TrafficModel",
    "Transaction",
    "generate_population",
]
