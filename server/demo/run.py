"""``python -m unified_profile.server.demo``: the whole system on one machine, with live traffic.

Starts the :class:`~unified_profile.server.demo.stack.DemoStack` (PostgreSQL with the seeded CRM
and loyalty databases and the profile store, a Tansu broker, ``unified-profile run`` on Kafka),
then the :class:`~unified_profile.server.demo.simulator.Simulator` and the
:class:`~unified_profile.server.demo.live_view.LiveView`, until Ctrl-C (SIGINT), SIGTERM or
``--seconds``. Stopping runs in reverse order and leaves no process behind.

Exit status: 0 after a clean stop, 1 when a part failed (the message says which and shows the
tail of its log), 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import TextIO

from unified_profile_client import ProfileClient

from ..logs import configure_logging
from .live_view import LiveView
from .people import generate_population
from .seeding import EXAMPLE_DIR
from .simulator import Simulator
from .stack import DemoFailed, DemoInterrupted, DemoStack
from .traffic import TrafficModel

EXIT_OK, EXIT_FAILED = 0, 1


def build_parser() -> argparse.ArgumentParser:
    """The demo's arguments."""
    parser = argparse.ArgumentParser(
        prog="python -m unified_profile.server.demo",
        description="CRM and loyalty databases, capture, engine and gRPC service on one machine, "
        "with simulated customers and a live view of profile changes. Ctrl-C stops everything.",
    )
    parser.add_argument(
        "--rate",
        type=_positive,
        default=20.0,
        help="simulated customer activities per second (default 20)",
    )
    parser.add_argument(
        "--people", type=int, default=3000, help="people to seed (default 3000; at least 10)"
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=42,
        help="random seed of the people and their activities (default 42)",
    )
    parser.add_argument(
        "--seconds", type=_positive, help="stop by itself after this many seconds of traffic"
    )
    parser.add_argument(
        "--headless",
        action="store_true",
        help="plain lines, no terminal codes; the summary every few seconds",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(".demo"),
        help="where the databases and logs live, recreated on start (default .demo)",
    )
    parser.add_argument(
        "--grpc-port", type=int, help="gRPC port (default 50051 when free, else any free port)"
    )
    parser.add_argument("--example-dir", type=Path, default=EXAMPLE_DIR, help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Run the demo until stopped; returns the exit status."""
    args = build_parser().parse_args(argv)
    if args.people < 10:
        build_parser().error("--people must be at least 10")
    out = out or sys.stdout
    # The view owns the terminal: our own log lines only when something goes wrong.
    configure_logging("warning", json=False)
    stop = threading.Event()

    def request_stop(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    return run_demo(args, out, stop)


def run_demo(args: argparse.Namespace, out: TextIO, stop: threading.Event) -> int:
    """Start, run until ``stop`` (or ``--seconds``), stop; returns the exit status."""
    interactive = not args.headless and out.isatty()
    out.write(
        f"unified-profile demo: {args.people:,} people, {args.rate:g} activities/s"
        f" (seed {args.seed}); Ctrl-C stops everything\n"
    )
    population = generate_population(args.people, args.seed)
    stack = DemoStack(args.data_dir, out, example_dir=args.example_dir, grpc_port=args.grpc_port)
    simulator: Simulator | None = None
    view: LiveView | None = None
    client: ProfileClient | None = None
    status = EXIT_OK
    try:
        endpoints = stack.start(population, stop)
        _print_try_it(out, stack.data_dir)
        client = ProfileClient(endpoints.grpc_target, token=endpoints.token, timeout=5)
        simulator = Simulator(
            TrafficModel(population, seed=args.seed),
            {"crm": endpoints.dsns["crm"], "loyalty": endpoints.dsns["loyalty"]},
            args.rate,
        )
        view = LiveView(
            client,
            out,
            interactive=interactive,
            activity=simulator.counts,
            simulator_rate=args.rate,
        )
        view.start()
        simulator.start()
        deadline = None if args.seconds is None else time.monotonic() + args.seconds
        while not stop.wait(1.0):
            stack.check_service()
            if view.failure is not None:
                raise DemoFailed(f"the live view's subscription failed: {view.failure}")
            view.refresh()
            if deadline is not None and time.monotonic() >= deadline:
                break
    except DemoInterrupted:
        pass
    except DemoFailed as exc:
        out.write(f"\nerror: {exc}\n")
        status = EXIT_FAILED
    finally:
        if simulator is not None:
            simulator.stop()
        if view is not None:
            view.stop()
        if client is not None:
            client.close()
        out.write("\nstopping…\n")
        out.flush()
        stopped = stack.stop()
        counts = simulator.counts() if simulator is not None else {}
        if counts:
            done = ", ".join(f"{kind} {n:,}" for kind, n in sorted(counts.items()))
            out.write(f"  simulated: {done}\n")
        out.write(f"  stopped: {', '.join(['simulator', *stopped])}\n")
        out.flush()
    return status


def _print_try_it(out: TextIO, data_dir: Path) -> None:
    env_file = data_dir / "profilectl.env"
    try:
        shown = env_file.relative_to(Path.cwd())
    except ValueError:
        shown = env_file
    profilectl = Path(sys.executable).parent / "profilectl"
    command = (
        str(profilectl.relative_to(Path.cwd()))
        if profilectl.is_relative_to(Path.cwd())
        else ("profilectl")
    )
    out.write(
        "  in another terminal:\n"
        f"    . {shown}\n"
        f"    {command} lookup email sally.smith@example.com\n"
        f"    {command} watch --path 'loyalty.*'\n\n"
    )
    out.flush()


def _positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return value


__all__ = ["build_parser", "main", "run_demo"]
