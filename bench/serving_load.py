"""Unary-call load generators for the serving scenario, each in a process of its own.

A generator never shares the server's GIL (or another generator's): each child runs one
``grpc.aio`` event loop with ``concurrency`` callers, each with one call in flight at a time
(closed loop), spread round-robin over ``channels`` channels. Every channel has its own
subchannel pool, hence its own TCP connection, so that servers sharing the port with
``SO_REUSEPORT`` (the kernel balances connections, not calls) each get a share.

All children of one measurement are given the same absolute start (``time.monotonic``, one clock
for the whole machine): they call from then on, count and time calls only inside the measured
window ``[start + warmup_s, start + warmup_s + duration_s)``, and stop at its end.
"""

from __future__ import annotations

import array
import asyncio
import multiprocessing
import multiprocessing.connection
import random
import resource
import time
import traceback
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from grpc import aio
from grpc_health.v1 import health_pb2

from unified_profile.v1 import profile_service_pb2 as pb

Method = Literal["echo", "get", "lookup"]
_CONTEXT = multiprocessing.get_context("spawn")
_CALL_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class LoadJob:
    """What one generator process does.

    Attributes:
        target: ``host:port`` of the server.
        method: ``echo`` (health ``Check``), ``get`` (GetProfile by id) or ``lookup``
            (LookupProfile by ``crm_id``).
        keys: Profile ids (``get``) or ``crm_id`` values (``lookup``); each call picks one at
            random.
        concurrency: Callers in this process, each with one call in flight.
        channels: Channels (connections) the callers are spread over.
        token: Bearer token sent with every call (the echo sends it too; health ignores it).
        start_at: ``time.monotonic()`` at which calling starts.
        warmup_s: Calls made before the measured window (connections, caches, JIT-free warm-up).
        duration_s: The measured window.
        seed: Seeds the key choice.
    """

    target: str
    method: Method
    keys: Sequence[str]
    concurrency: int
    channels: int
    token: str
    start_at: float
    warmup_s: float
    duration_s: float
    seed: int


@dataclass(frozen=True)
class LoadResult:
    """What one generator measured inside the window.

    Attributes:
        calls: Calls completed successfully inside the window.
        errors: Calls that failed inside the window, by status code name.
        latencies_s: The latency of each successful call of the window.
        cpu_s: This process's user + system CPU inside the window.
    """

    calls: int
    errors: dict[str, int]
    latencies_s: array.array[float]
    cpu_s: float


def run_load(jobs: Sequence[LoadJob], timeout: float) -> list[LoadResult]:
    """Run one generator process per job, all at once; return their results.

    Raises:
        RuntimeError: A generator failed or did not finish within ``timeout`` seconds.
    """
    started: list[tuple[Any, multiprocessing.connection.Connection]] = []
    try:
        for i, job in enumerate(jobs):
            parent_end, child_end = _CONTEXT.Pipe(duplex=False)
            process = _CONTEXT.Process(
                target=_main, args=(job, child_end), name=f"bench-load-{i}", daemon=True
            )
            process.start()
            child_end.close()
            started.append((process, parent_end))
        results: list[LoadResult] = []
        for process, parent_end in started:
            if not parent_end.poll(timeout):
                raise RuntimeError(f"{process.name} did not finish within {timeout:.0f}s")
            outcome = parent_end.recv()
            if isinstance(outcome, str):
                raise RuntimeError(f"{process.name} failed:\n{outcome}")
            results.append(outcome)
        return results
    finally:
        for process, _ in started:
            process.join(5)
            if process.is_alive():
                process.kill()


def _main(job: LoadJob, conn: multiprocessing.connection.Connection) -> None:
    try:
        conn.send(asyncio.run(_generate(job)))
    except BaseException:
        conn.send(traceback.format_exc())
    finally:
        conn.close()


async def _generate(job: LoadJob) -> LoadResult:
    options = [("grpc.use_local_subchannel_pool", 1)]
    channels = [aio.insecure_channel(job.target, options=options) for _ in range(job.channels)]
    try:
        for channel in channels:
            await asyncio.wait_for(channel.channel_ready(), 30)
        calls = [_caller(job, channel) for channel in channels]
        requests = requests_for(job.method, job.keys)
        begin = job.start_at + job.warmup_s
        end = begin + job.duration_s
        latencies: array.array[float] = array.array("d")
        errors: dict[str, int] = {}
        rng = random.Random(job.seed)
        cpu: list[float] = []
        loop = asyncio.get_running_loop()
        # The loop's clock is time.monotonic(): sample this process's CPU at the window's edges.
        for edge in (begin, end):
            loop.call_at(edge, lambda: cpu.append(_cpu_s()))
        delay = job.start_at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)

        async def caller(call: Callable[[bytes], Awaitable[Any]]) -> None:
            while True:
                request = requests[rng.randrange(len(requests))]
                sent = time.monotonic()
                if sent >= end:
                    return
                try:
                    await call(request)
                except aio.AioRpcError as exc:
                    if sent >= begin:
                        name = exc.code().name
                        errors[name] = errors.get(name, 0) + 1
                    continue
                if sent >= begin:
                    latencies.append(time.monotonic() - sent)

        await asyncio.gather(*(caller(calls[i % len(calls)]) for i in range(job.concurrency)))
        while len(cpu) < 2:
            await asyncio.sleep(0.01)
        return LoadResult(len(latencies), errors, latencies, cpu[1] - cpu[0])
    finally:
        for channel in channels:
            await channel.close()


_PATHS = {
    "echo": "/grpc.health.v1.Health/Check",
    "get": "/unified_profile.v1.ProfileService/GetProfile",
    "lookup": "/unified_profile.v1.ProfileService/LookupProfile",
}


def requests_for(method: Method, keys: Sequence[str]) -> list[bytes]:
    """Each key's request, serialised (the generator sends bytes and keeps responses as bytes,
    so that its own protobuf work does not limit what it can offer the server)."""
    if method == "echo":
        return [health_pb2.HealthCheckRequest(service="").SerializeToString()]
    if method == "get":
        return [pb.GetProfileRequest(profile_id=k).SerializeToString() for k in keys]
    return [
        pb.LookupProfileRequest(identifier_type="crm_id", value=k).SerializeToString()
        for k in keys
    ]


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _caller(job: LoadJob, channel: aio.Channel) -> Callable[[bytes], Awaitable[Any]]:
    metadata = (("authorization", f"Bearer {job.token}"),)
    call = channel.unary_unary(_PATHS[job.method])

    def send(request: bytes) -> Awaitable[Any]:
        response: Awaitable[Any] = call(request, metadata=metadata, timeout=_CALL_TIMEOUT_S)
        return response

    return send


__all__ = ["LoadJob", "LoadResult", "Method", "run_load"]

