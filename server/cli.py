"""The ``unified-profile`` command.

Exit codes: 0 after a clean stop, 2 for an invalid configuration, 3 when a database is not ready
(a source not ready for capture, a store not migrated, a store another ``run`` is using; the
message says what to fix), 4 when ``reconcile`` found drift (after ``--repair``: drift left),
1 for anything else.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import signal
import sys
import threading
from collections.abc import Sequence
from dataclasses import replace
from types import FrameType

import structlog

from unified_profile.cdc.config import KafkaConfig, load_capture_config
from unified_profile.cdc.errors import ConfigError, PreflightError

from .capture import CaptureService
from .collector import settle_after_start
from .config import ServiceConfig, load_service_config
from .ingest.service import StoreNotMigrated, open_store, run_kafka_engine
from .logs import configure_logging
from .metrics import MetricsStartError, load_metrics_config, serve_metrics
from .retry import retry_transient
from .store import migrate

EXIT_OK, EXIT_FAILED, EXIT_CONFIG, EXIT_PREFLIGHT, EXIT_DRIFT = 0, 1, 2, 3, 4

log = structlog.get_logger(__name__)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for the README's reference and for tests)."""
    parser = argparse.ArgumentParser(
        prog="unified-profile",
        description="One real-time customer record shared by a CRM and a loyalty platform.",
    )
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    parser.add_argument(
        "--log-format",
        choices=["json", "console"],
        help="default: console on a terminal, JSON lines otherwise",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    cdc = commands.add_parser(
        "cdc", help="capture source databases as Debezium change events into Kafka"
    )
    cdc.add_argument("--config", required=True, help="the TOML configuration file")
    cdc.add_argument(
        "--source",
        action="append",
        help="capture only this source (repeatable; default: every source)",
    )
    migrate = commands.add_parser("migrate", help="create or upgrade the profile store's schema")
    migrate.add_argument("--config", required=True, help="the TOML configuration file")
    engine = commands.add_parser(
        "engine", help="apply change events from Kafka to the profile store (a consumer group)"
    )
    engine.add_argument("--config", required=True, help="the TOML configuration file")
    serve = commands.add_parser(
        "serve", help="serve the gRPC ProfileService ([grpc] in the config) until stopped"
    )
    serve.add_argument("--config", required=True, help="the TOML configuration file")
    serve.add_argument("--listen", help="host:port overriding [grpc] listen")
    run = commands.add_parser(
        "run",
        help="connectors, engine and gRPC server in one process (migrates the store first)",
    )
    run.add_argument("--config", required=True, help="the TOML configuration file")
    run.add_argument("--listen", help="host:port overriding [grpc] listen")
    reconcile = commands.add_parser(
        "reconcile",
        help="compare every source row with the store; report drift (exit 4 if any)",
    )
    reconcile.add_argument("--config", required=True, help="the TOML configuration file")
    reconcile.add_argument(
        "--repair", action="store_true", help="re-sync what drifted through the apply path"
    )
    reconcile.add_argument("--json", action="store_true", help="print the report as JSON")
    dead = commands.add_parser("dead-letters", help="list or replay events that could not be applied")
    dead_commands = dead.add_subparsers(dest="dead_command", required=True)
    listing = dead_commands.add_parser("list", help="the oldest first (payloads are not shown)")
    listing.add_argument("--config", required=True, help="the TOML configuration file")
    listing.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")
    listing.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    replaying = dead_commands.add_parser(
        "replay", help="apply them again with the current mapping; removed once applied"
    )
    replaying.add_argument("--config", required=True, help="the TOML configuration file")
    which = replaying.add_mutually_exclusive_group(required=True)
    which.add_argument("--id", type=int, action="append", dest="ids", help="a dead letter's id")
    which.add_argument("--all", action="store_true", help="every dead letter")
    replaying.add_argument("--json", action="store_true", help="print the report as JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``unified-profile`` console script."""
    args = build_parser().parse_args(argv)
    configure_logging(
        args.log_level, None if args.log_format is None else args.log_format == "json"
    )
    try:
        if args.command == "cdc":
            return _run_cdc(args)
        if args.command == "migrate":
            return _run_migrate(args)
        if args.command == "engine":
            return _run_engine(args)
        if args.command == "serve":
            return _run_serve(args)
        if args.command == "run":
            return _run_all(args)
        if args.command == "reconcile":
            return _run_reconcile(args)
        if args.command == "dead-letters":
            return _run_dead_letters(args)
    except StoreNotMigrated as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_PREFLIGHT
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except PreflightError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_PREFLIGHT
    except MetricsStartError as exc:
        print(f"error: {exc}", file=sys.stderr)
    return EXIT_FAILED


def _run_cdc(args: argparse.Namespace) -> int:
    config = load_capture_config(args.config)
    if not isinstance(config.transport, KafkaConfig):
        raise ConfigError(
            args.config,
            [
                (
                    "transport.kind",
                    'the cdc command publishes to Kafka: set kind = "kafka" and bootstrap_servers',
                )
            ],
        )
    sources = [config.source(name) for name in args.source] if args.source else config.sources
    serve_metrics(load_metrics_config(args.config))
    service = CaptureService(config, sources)

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        log.info("cdc.stop_requested", signal=signal.Signals(signum).name)
        service.stop()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    settle_after_start()
    service.start()
    while not service.wait(timeout=0.5):
        pass
    if service.failure is not None:
        # Retrying cannot fix these; the message already names the problem and its fix.
        if isinstance(service.failure, PreflightError | ConfigError):
            raise service.failure
        print(f"error: {service.failure}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def _run_migrate(args: argparse.Namespace) -> int:
    config = load_service_config(args.config)
    migrate.upgrade(config.store.dsn)
    log.info("store.migrated", revision=migrate.HEAD_REVISION)
    return EXIT_OK


def _run_engine(args: argparse.Namespace) -> int:
    config = load_service_config(args.config)
    stop = threading.Event()
    _stop_on_signals(stop)
    store = open_store(config)
    serve_metrics(config.metrics)
    settle_after_start()
    try:
        retry_transient(stop, "engine", lambda: run_kafka_engine(config, store, stop))
    finally:
        store.close()
    return EXIT_OK


def _run_serve(args: argparse.Namespace) -> int:
    # Imported here: the gRPC stack is only needed by this command.
    from .rpc.server import ServerStartError, serve

    config = _with_listen(load_service_config(args.config), args.listen)
    store = open_store(config)
    serve_metrics(config.metrics)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, _log_and_set, stop, signum)
        await serve(config, store, stop)  # settles the collector once the server is up

    try:
        asyncio.run(run())
    except ServerStartError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        store.close()
    return EXIT_OK


def _run_all(args: argparse.Namespace) -> int:
    from .allinone import StoreInUse, run_all
    from .rpc.server import ServerStartError

    config = _with_listen(load_service_config(args.config), args.listen)
    migrate.upgrade(config.store.dsn)
    store = open_store(config)

    async def run() -> Exception | None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, _log_and_set, stop, signum)
        # run_all's server settles the collector once it is up (see rpc.server.serve).
        return (await run_all(config, store, stop)).failure

    try:
        failure = asyncio.run(run())
    except (StoreInUse, ServerStartError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_PREFLIGHT if isinstance(exc, StoreInUse) else EXIT_FAILED
    finally:
        store.close()
    if failure is None:
        return EXIT_OK
    if isinstance(failure, StoreInUse):
        print(f"error: {failure}", file=sys.stderr)
        return EXIT_PREFLIGHT
    # Retrying cannot fix these; the message already names the problem and its fix.
    if isinstance(failure, PreflightError | ConfigError):
        raise failure
    print(f"error: {failure}", file=sys.stderr)
    return EXIT_FAILED


def _run_reconcile(args: argparse.Namespace) -> int:
    from .reconcile.checker import check
    from .reconcile.output import as_table
    from .reconcile.repair import repair

    config = load_service_config(args.config)
    store = open_store(config)
    try:
        report = check(config, store)
        document: dict[str, object] = {"report": report.as_json()}
        text = [as_table(report)]
        if args.repair and report.drifted:
            appended = repair(config, store, report)
            report = check(config, store)
            document.update(repaired_profile_changes=appended, after_repair=report.as_json())
            text += [f"repaired: {appended} profile changes appended", as_table(report)]
    finally:
        store.close()
    print(json.dumps(document, indent=2) if args.json else "\n".join(text))
    return EXIT_DRIFT if report.drifted else EXIT_OK


def _run_dead_letters(args: argparse.Namespace) -> int:
    from .ingest import dead_letters
    from .ingest.service import build_pipeline

    config = load_service_config(args.config)
    store = open_store(config)
    try:
        if args.dead_command == "list":
            letters = dead_letters.list_dead_letters(store, args.limit)
            if args.json:
                for letter in letters:
                    print(json.dumps(dataclasses.asdict(letter)))
            else:
                for letter in letters:
                    print(
                        f"{letter.id}\t{letter.recorded_at}\t{letter.stream}@{letter.position}"
                        f"\t{letter.reason}"
                    )
                print(f"{len(letters)} dead letter(s)")
            return EXIT_OK
        report = dead_letters.replay(
            store,
            build_pipeline(config, store, "replay"),
            None if args.all else args.ids,
            capture=config.capture,
        )
    finally:
        store.close()
    if args.json:
        print(json.dumps(dataclasses.asdict(report)))
    else:
        print(
            f"replayed {len(report.applied)}, still failing {len(report.failed)},"
            f" profile changes {report.profile_changes}"
        )
        for letter_id, reason in sorted(report.failed.items()):
            print(f"  {letter_id}: {reason}")
    return EXIT_FAILED if report.failed else EXIT_OK


def _with_listen(config: ServiceConfig, listen: str | None) -> ServiceConfig:
    if not listen:
        return config
    return replace(config, grpc=config.grpc.model_copy(update={"listen": listen}))


def _log_and_set(stop: asyncio.Event, signum: int) -> None:
    log.info("stop_requested", signal=signal.Signals(signum).name)
    stop.set()


def _stop_on_signals(stop: threading.Event) -> None:
    def request_stop(signum: int, _frame: FrameType | None) -> None:
        log.info("stop_requested", signal=signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)


if __name__ == "__main__":
    sys.exit(main())
