"""``python -m bench.run [--quick]``: run the benchmark suite and write ``bench/results/``.

Starts (or connects to) PostgreSQL and a Kafka-protocol broker, runs each scenario, prints the
results table and writes ``bench/results/<date>-<commit>[-quick].json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import importlib.metadata
import logging
import os
import platform
import subprocess
import sys
import time
import uuid
from pathlib import Path

import structlog

from .report import Figure, Report
from .scenario import Context, Scenario
from .services import bench_services
from .timing import peak_rss_mib

RESULTS_DIR = Path(__file__).resolve().parent / "results"
# Scenario name → its module (``run(ctx)``), in running order. Imported only when run: every
# process the bench spawns imports this module first, and the scenarios' imports (gRPC,
# SQLAlchemy, kafka-python) would cost each of them about a second of CPU.
SCENARIOS: dict[str, str] = {
    "capture": "bench.capture",
    "apply": "bench.apply",
    "serving": "bench.serving",
    "end_to_end": "bench.end_to_end",
    "growth": "bench.growth",
}
DEFAULT_SEED = 20_240_601


def main(argv: list[str] | None = None) -> int:
    """Run the suite; returns the process exit code."""
    args = _parse_args(argv)
    _quiet_logging()
    run_id = uuid.uuid4().hex[:8]
    started = time.monotonic()
    commit, dirty = _git_commit()
    today = dt.date.today().isoformat()
    report = Report(run={})
    scenario_seconds: dict[str, float] = {}
    with bench_services(run_id) as services:
        ctx = Context(services=services, run_id=run_id, seed=args.seed, quick=args.quick)
        for index, name in enumerate(args.only or list(SCENARIOS)):
            if index and services.empty_broker is not None:
                services.empty_broker()  # why: see bench/services.py
            print(f"running {name} ({'quick' if args.quick else 'full'}) …", flush=True)
            scenario_started = time.monotonic()
            result = _scenario(name)(ctx)
            scenario_seconds[name] = round(time.monotonic() - scenario_started, 1)
            print(f"  {name}: {scenario_seconds[name]:.0f} s", flush=True)
            report.figures += result.figures
            report.details[name] = result.details
            report.notes += result.notes
        report.run = {
            "date": today,
            "commit": commit,
            "dirty_worktree": dirty,
            "mode": "quick" if args.quick else "full",
            "seed": args.seed,
            "scenarios": args.only or list(SCENARIOS),
            "cpu_count": os.cpu_count(),
            "cpu_model": _cpu_model(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "postgres": services.postgres,
            "broker": services.broker,
            "kafka_python": importlib.metadata.version("kafka-python"),
            "kafka_python_crc32c": _kafka_crc32c(),
        }
    report.figures.append(Figure("peak RSS, bench process", peak_rss_mib(), "MiB"))
    report.run["duration_s"] = round(time.monotonic() - started, 1)
    report.run["scenario_seconds"] = scenario_seconds
    stem = f"{today}-{commit}" + ("-quick" if args.quick else "")
    json_path, md_path = report.write(args.output, stem)
    print()
    print(report.markdown())
    print(f"wrote {json_path} and {md_path}")
    missed = [f.measure for f in report.figures if f.met is False]
    if missed:
        print("targets missed: " + "; ".join(missed))
    return 1 if missed and args.strict else 0


def _scenario(name: str) -> Scenario:
    run: Scenario = importlib.import_module(SCENARIOS[name]).run
    return run


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smoke-run sizes (under 3 minutes)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="workload seed")
    parser.add_argument(
        "--only", action="append", choices=sorted(SCENARIOS), help="run only this scenario"
    )
    parser.add_argument("--output", type=Path, default=RESULTS_DIR, help="results directory")
    parser.add_argument(
        "--strict", action="store_true", help="exit with status 1 when a target is missed"
    )
    return parser.parse_args(argv)


def _git_commit() -> tuple[str, bool]:
    """The short commit of the working tree and whether it has uncommitted changes."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=root, capture_output=True, text=True, check=True,
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root, capture_output=True, text=True, check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return "nogit", False
    return commit, bool(status.strip())


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def _quiet_logging() -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    # The bench's own clients (readers, the raw producer) are not under test.
    logging.getLogger("kafka").setLevel(logging.ERROR)


def _kafka_crc32c() -> str:
    """Which CRC-32C kafka-python computes record batches with (it dominates produce cost)."""
    from kafka.record import util

    return "pure-python" if util.crc32c_c is None else "crc32c (C extension)"


if __name__ == "__main__":
    sys.exit(main())
