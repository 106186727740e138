"""Subscriber processes and the store change writer of the fan-out scenarios.

* **Subscribers** (:func:`subscribers_main`): each child opens ``subscribers`` streams of
  ``SubscribeProfileChanges`` (``START_LATEST``, no filter, changed fields only, heartbeats every
  second, up to as many changes per message as the Python client asks for) over a few channels, reports ``ready`` once every stream has received a first message
  (a heartbeat proves the stream is live on the server), and then records, for every change it
  receives, ``(sequence, time.monotonic())`` until told to stop. Protobuf parsing of the
  messages is part of what a subscriber does, so it is kept.
* **Change writer** (:func:`change_writer_main`): applies profile updates to the store through
  the engine's :class:`~unified_profile.server.ingest.applier.ProfileApplier`, one store
  transaction (one UPDATED change) per tick at a fixed rate, and records for each change its
  sequence and the ``time.monotonic()`` at which its commit returned. This is the store-commit
  → subscriber part of the pipeline: what the change feed and the gRPC fan-out add.

``time.monotonic()`` is one clock for every process of the machine, so times compare directly.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import json
import multiprocessing
import multiprocessing.connection
import time
import traceback
from dataclasses import dataclass
from typing import Any

from grpc import aio
from unified_profile_client import CHANGES_PER_MESSAGE

from unified_profile.v1 import profile_service_pb2 as pb
from unified_profile.v1 import profile_service_pb2_grpc

_CONTEXT = multiprocessing.get_context("spawn")
_STREAMS_PER_CHANNEL = 100


@dataclass(frozen=True)
class SubscribeJob:
    """What one subscriber process does.

    Attributes:
        target: ``host:port`` of the server.
        token: A bearer token with ``profiles.subscribe``.
        subscribers: Streams this process opens.
    """

    target: str
    token: str
    subscribers: int


@dataclass(frozen=True)
class Received:
    """What one subscriber process received: one entry per change delivered to one stream.

    Attributes:
        sequences: The change's sequence.
        times: When it was received (``time.monotonic()``).
        errors: Streams that ended with an error, by status code name.
    """

    sequences: array.array[int]
    times: array.array[float]
    errors: dict[str, int]


def stream_errors(received: list[Received]) -> dict[str, int]:
    """Streams that ended with an error, by status code name, over every subscriber process."""
    merged: dict[str, int] = {}
    for part in received:
        for name, count in part.errors.items():
            merged[name] = merged.get(name, 0) + count
    return merged


class SubscriberGroup:
    """Subscriber processes: start, wait until every stream is live, stop and collect."""

    def __init__(self, jobs: list[SubscribeJob]) -> None:
        self._children: list[tuple[Any, multiprocessing.connection.Connection]] = []
        self._jobs = jobs

    def start(self, timeout: float = 120.0) -> None:
        """Start the processes; return once every stream has received a first message.

        Raises:
            RuntimeError: A process failed or its streams did not become live in time.
        """
        for i, job in enumerate(self._jobs):
            parent_end, child_end = _CONTEXT.Pipe()
            child = _CONTEXT.Process(
                target=subscribers_main, args=(job, child_end), name=f"bench-subs-{i}",
                daemon=True,
            )
            child.start()
            self._children.append((child, parent_end))
        for child, conn in self._children:
            if not conn.poll(timeout):
                raise RuntimeError(f"{child.name}: streams not live within {timeout:.0f}s")
            message = conn.recv()
            if message != "ready":
                raise RuntimeError(f"{child.name} failed:\n{message}")

    def stop(self, timeout: float = 120.0) -> list[Received]:
        """Stop every process and return what each received.

        Raises:
            RuntimeError: A process failed.
        """
        for _, conn in self._children:
            conn.send("stop")
        results: list[Received] = []
        try:
            for child, conn in self._children:
                if not conn.poll(timeout):
                    raise RuntimeError(f"{child.name} did not report within {timeout:.0f}s")
                outcome = conn.recv()
                if isinstance(outcome, str):
                    raise RuntimeError(f"{child.name} failed:\n{outcome}")
                results.append(outcome)
        finally:
            self.kill()
        return results

    def kill(self) -> None:
        """End the processes (after :meth:`stop`, or on failure)."""
        for child, _ in self._children:
            child.join(5)
            if child.is_alive():
                child.kill()
        self._children.clear()


def subscribers_main(job: SubscribeJob, conn: multiprocessing.connection.Connection) -> None:
    """Entry point of a subscriber process."""
    try:
        conn.send(asyncio.run(_subscribe(job, conn)))
    except BaseException:
        with contextlib.suppress(Exception):
            conn.send(traceback.format_exc())
    finally:
        conn.close()


async def _subscribe(job: SubscribeJob, conn: multiprocessing.connection.Connection) -> Received:
    channel_count = max(1, -(-job.subscribers // _STREAMS_PER_CHANNEL))
    options = [("grpc.use_local_subchannel_pool", 1)]
    channels = [aio.insecure_channel(job.target, options=options) for _ in range(channel_count)]
    sequences: array.array[int] = array.array("q")
    times: array.array[float] = array.array("d")
    errors: dict[str, int] = {}
    live = 0
    all_live = asyncio.Event()
    request = pb.SubscribeProfileChangesRequest(
        start=pb.SubscribeProfileChangesRequest.START_LATEST, heartbeat_seconds=1,
        max_changes_per_message=CHANGES_PER_MESSAGE,
    )
    metadata = (("authorization", f"Bearer {job.token}"),)

    async def stream(stub: profile_service_pb2_grpc.ProfileServiceStub) -> None:
        nonlocal live
        first = True
        try:
            async for message in stub.SubscribeProfileChanges(request, metadata=metadata):
                now = time.monotonic()
                if message.HasField("changes"):
                    for change in message.changes.changes:
                        sequences.append(change.sequence)
                        times.append(now)
                if first:
                    first = False
                    live += 1
                    if live == job.subscribers:
                        all_live.set()
        except aio.AioRpcError as exc:
            name = exc.code().name
            errors[name] = errors.get(name, 0) + 1

    try:
        for channel in channels:
            await asyncio.wait_for(channel.channel_ready(), 30)
        stubs = [profile_service_pb2_grpc.ProfileServiceStub(c) for c in channels]
        tasks = [
            asyncio.create_task(stream(stubs[i % len(stubs)])) for i in range(job.subscribers)
        ]
        await asyncio.wait_for(all_live.wait(), 90)
        conn.send("ready")
        # The pipe is not awaitable: poll it without blocking the loop.
        while not conn.poll():
            await asyncio.sleep(0.1)
        conn.recv()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return Received(sequences, times, errors)
    finally:
        for channel in channels:
            await channel.close()


# --- the change writer ---------------------------------------------------------------------------


@dataclass(frozen=True)
class WriterJob:
    """What the change writer does.

    Attributes:
        config: The service config (as parsed TOML; its store, identity and rules are used).
        source: The CRM source's name (the preloaded customers' record keys).
        seed: The preload's seed (the customers' stored images are rebuilt from it).
        customers: Preloaded customers ``1..customers``; changes go to them in turn.
        rate: Changes (store commits) per second.
        changes: How many.
        first_version: A version above every stored one (each change gets the next).
    """

    config: dict[str, Any]
    source: str
    seed: int
    customers: int
    rate: float
    changes: int
    first_version: int


@dataclass(frozen=True)
class Written:
    """What the writer committed: for change ``i``, its sequence and commit-return time."""

    sequences: array.array[int]
    times: array.array[float]


def write_changes(job: WriterJob, timeout: float) -> Written:
    """Run the change writer in a process of its own; return what it committed.

    Raises:
        RuntimeError: It failed or did not finish within ``timeout`` seconds.
    """
    parent_end, child_end = _CONTEXT.Pipe(duplex=False)
    child = _CONTEXT.Process(
        target=change_writer_main, args=(job, child_end), name="bench-change-writer",
        daemon=True,
    )
    child.start()
    child_end.close()
    try:
        if not parent_end.poll(timeout):
            raise RuntimeError(f"the change writer did not finish within {timeout:.0f}s")
        outcome = parent_end.recv()
        if isinstance(outcome, str):
            raise RuntimeError(f"the change writer failed:\n{outcome}")
        assert isinstance(outcome, Written)
        return outcome
    finally:
        child.join(10)
        if child.is_alive():
            child.kill()


def change_writer_main(job: WriterJob, conn: multiprocessing.connection.Connection) -> None:
    """Entry point of the change writer process."""
    try:
        conn.send(_write(job))
    except BaseException:
        with contextlib.suppress(Exception):
            conn.send(traceback.format_exc())
    finally:
        conn.close()


def _write(job: WriterJob) -> Written:
    from unified_profile.server.config import parse_service_config
    from unified_profile.server.engine.records import Identifier, SourceRecord
    from unified_profile.server.ingest.applier import IncomingRecord, ProfileApplier
    from unified_profile.server.ingest.service import open_store

    from .apply_data import Preloader

    config = parse_service_config(job.config, "bench")
    store = open_store(config)
    applier = ProfileApplier(config.mapping.identity_types, config.rules)
    preloader = Preloader(job.seed, job.source, config.rules)
    sequences: array.array[int] = array.array("q")
    times: array.array[float] = array.array("d")
    try:
        started = time.monotonic()
        for n in range(job.changes):
            delay = started + n / job.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            stored = preloader.stored(1 + n % job.customers)
            version = job.first_version + n
            record = SourceRecord(
                key=stored.key,
                fields={**stored.fields, "traits.crm_notes": f"bench change {version}"},
                identifiers=frozenset(Identifier(t, v) for t, v in stored.identifiers),
                version=version,
                commit_time_us=int(time.time() * 1_000_000),
                position=version,
            )
            cause = {
                "source": stored.key.source, "table": stored.key.table,
                "key": json.loads(stored.key.key), "lsn": version,
                "commit_time_us": record.commit_time_us,
            }
            with store.batch() as batch:
                head = batch.head
                rows = applier.apply(batch, [IncomingRecord(record, cause)])
            committed = time.monotonic()
            for i in range(len(rows)):
                sequences.append(head + 1 + i)
                times.append(committed)
    finally:
        store.close()
    return Written(sequences, times)


__all__ = [
    "Received",
    "SubscribeJob",
    "SubscriberGroup",
    "WriterJob",
    "Written",
    "change_writer_main",
    "stream_errors",
    "subscribers_main",
    "write_changes",
]
