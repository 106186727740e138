"""``profilectl``: read profiles, their history and their explanation, and follow changes.

::

    profilectl --target 127.0.0.1:50051 get p_01HZX...
    profilectl lookup email anne@example.com --fields person,loyalty
    profilectl explain p_01HZX...
    profilectl history p_01HZX... --json
    profilectl watch --from earliest --path 'loyalty.*' --json

The token comes from ``--token`` or ``PROFILECTL_TOKEN`` (an environment variable keeps it out of
the process list and shell history); the target from ``--target`` or ``PROFILECTL_TARGET``.
Output is for people by default; ``--json`` prints one JSON object per line (the proto3 JSON
mapping with the proto's field names): the response for get, lookup and explain, one change per
line for history and watch.

Exit status: 0 success, 1 the call failed (the status code and message go to stderr), 2 a usage
error, 130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterable, Sequence
from typing import TextIO

from unified_profile.v1 import profile_pb2

from . import _render
from ._client import DEFAULT_PAGE_SIZE, ProfileClient
from ._config import RetryConfig, TlsConfig
from ._exceptions import ProfileServiceError
from ._types import CHANGE_KIND_NAMES, ChangeFilter, ChangeKindName, WatchStart

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

DEFAULT_TARGET = "127.0.0.1:50051"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (global options are accepted before or after the command)."""
    parser = argparse.ArgumentParser(
        prog="profilectl",
        description="Read unified profiles and follow their changes (the ProfileService).",
    )
    _add_connection_options(parser, suppress=False)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        _add_connection_options(sub, suppress=True)
        return sub

    get = command("get", "one profile by id (an alias gives the surviving profile)")
    get.add_argument("profile_id")
    get.add_argument("--fields", type=_paths, help="only these field paths, comma-separated")

    lookup = command("lookup", "the profile holding an identifier (email, crm_id, ...)")
    lookup.add_argument("identifier_type")
    lookup.add_argument("value")
    lookup.add_argument("--fields", type=_paths, help="only these field paths, comma-separated")

    explain = command("explain", "why the profile looks as it does: candidates, links, conflicts")
    explain.add_argument("profile_id")

    history = command("history", "the profile's changes, oldest first")
    history.add_argument("profile_id")
    history.add_argument("--page-size", type=int, default=DEFAULT_PAGE_SIZE, help="per call")
    history.add_argument("--limit", type=_positive, help="stop after this many changes")

    watch = command("watch", "follow changes as they commit (reconnects and resumes by itself)")
    watch.add_argument(
        "--from", dest="start", type=_start, default="latest", metavar="earliest|latest|SEQ",
        help="where to start: the oldest retained change, new changes only (default), or "
        "after a sequence (resume)",
    )
    watch.add_argument("--kind", action="append", default=[], type=_kind,
                       help=f"only this kind ({', '.join(CHANGE_KIND_NAMES)}); repeatable")
    watch.add_argument("--path", action="append", default=[],
                       help="only changes touching this field path (loyalty.tier, consent.*); "
                       "repeatable")
    watch.add_argument("--source", action="append", default=[],
                       help="only changes caused by this source (crm, loyalty, steward); repeatable")
    watch.add_argument("--include-profile", action="store_true",
                       help="attach the whole profile to each change")
    watch.add_argument("--count", type=_positive, help="stop after this many changes")
    watch.add_argument("--heartbeat", type=_positive, help="server heartbeat interval, seconds")
    return parser


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None,
         err: TextIO | None = None) -> int:
    """Run ``profilectl`` with ``argv`` (the process's arguments when ``None``).

    Args:
        argv: The arguments, without the program name.
        out: Where results go (standard output when ``None``).
        err: Where errors go (standard error when ``None``).

    Returns:
        The exit status.
    """
    out = out or sys.stdout
    err = err or sys.stderr
    parser = build_parser()
    try:
        # argparse writes usage errors and --help to the process's streams; send them to ours.
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            args = parser.parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    try:
        tls = _tls(args)
    except (OSError, ValueError) as exc:
        print(f"profilectl: error: TLS: {exc}", file=err)
        return EXIT_USAGE
    token = args.token or os.environ.get("PROFILECTL_TOKEN") or None
    try:
        with ProfileClient(
            args.target, token=token, tls=tls, timeout=args.timeout,
            retry=RetryConfig(max_reconnects=args.max_reconnects),
        ) as client:
            _run(client, args, out)
    except ProfileServiceError as exc:
        print(f"profilectl: {exc.code.name}: {exc.message}", file=err)
        return EXIT_FAILED
    except ValueError as exc:
        print(f"profilectl: error: {exc}", file=err)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # `profilectl watch | head`: the reader left, which is how such a pipeline ends.
        _silence_stdout()
        return EXIT_OK
    return EXIT_OK


def _run(client: ProfileClient, args: argparse.Namespace, out: TextIO) -> None:
    as_json: bool = args.json
    if args.command == "get":
        response = client.get_response(args.profile_id, args.fields)
        if as_json:
            _write(out, [_render.to_json(response)])
        else:
            _write(out, _render.render_profile(response.profile, args.profile_id))
    elif args.command == "lookup":
        profile = client.lookup(args.identifier_type, args.value, args.fields)
        _write(out, [_render.to_json(profile)] if as_json else _render.render_profile(profile))
    elif args.command == "explain":
        explanation = client.explain(args.profile_id)
        _write(out, [_render.to_json(explanation)] if as_json
               else _render.render_explanation(explanation))
    elif args.command == "history":
        changes = client.history(args.profile_id, page_size=args.page_size)
        _print_changes(out, changes, as_json, args.limit)
    elif args.command == "watch":
        change_filter = ChangeFilter(
            kinds=tuple(args.kind), field_paths=tuple(args.path), sources=tuple(args.source)
        )
        with client.watch(args.start, change_filter, args.include_profile,
                          heartbeat_seconds=args.heartbeat) as stream:
            _print_changes(out, stream, as_json, args.count)


def _print_changes(out: TextIO, changes: Iterable[profile_pb2.ProfileChange],
                   as_json: bool, limit: int | None) -> None:
    for count, change in enumerate(changes, start=1):
        _write(out, [_render.to_json(change)] if as_json else [*_render.render_change(change), ""])
        if limit is not None and count >= limit:
            return


def _write(out: TextIO, lines: Iterable[str]) -> None:
    for line in lines:
        out.write(line + "\n")
    # Per item: a watch's output is read live, line by line, by people and by pipes.
    out.flush()


def _tls(args: argparse.Namespace) -> TlsConfig | None:
    if not (args.tls or args.tls_ca or args.tls_cert or args.tls_key):
        return None
    return TlsConfig.from_files(
        args.tls_ca, cert_file=args.tls_cert, key_file=args.tls_key,
        server_name=args.tls_server_name,
    )


def _add_connection_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    # Declared on the main parser and on every command, so they may come before or after the
    # command; on commands the default is SUPPRESS, so an option left out there does not
    # overwrite one given before the command.
    def default(value: object) -> object:
        return argparse.SUPPRESS if suppress else value

    group = parser.add_argument_group("connection and output")
    group.add_argument("--target", default=default(os.environ.get("PROFILECTL_TARGET",
                                                                   DEFAULT_TARGET)),
                       help="server host:port (env PROFILECTL_TARGET; default %(default)s)")
    group.add_argument("--token", default=default(None),
                       help="bearer token (better: env PROFILECTL_TOKEN)")
    group.add_argument("--tls", action="store_true", default=default(False),
                       help="use TLS with the system's CA certificates")
    group.add_argument("--tls-ca", default=default(None), metavar="PEM",
                       help="use TLS, verifying the server against this CA certificate")
    group.add_argument("--tls-cert", default=default(None), metavar="PEM",
                       help="client certificate for mutual TLS")
    group.add_argument("--tls-key", default=default(None), metavar="PEM",
                       help="client private key for mutual TLS")
    group.add_argument("--tls-server-name", default=default(None), metavar="NAME",
                       help="verify the server certificate against this name")
    group.add_argument("--timeout", type=float, default=default(10.0),
                       help="deadline of each call, seconds (default 10)")
    group.add_argument("--max-reconnects", type=int, default=default(None),
                       help="watch: give up after this many failed reconnects in a row "
                       "(default: never)")
    group.add_argument("--json", action="store_true", default=default(False),
                       help="machine-readable output: one JSON object per line")


def _paths(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _start(text: str) -> WatchStart:
    if text in ("earliest", "latest"):
        return "earliest" if text == "earliest" else "latest"
    try:
        sequence = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("earliest, latest or a sequence number") from None
    if sequence < 0:
        raise argparse.ArgumentTypeError("a sequence is at least 0")
    return sequence


def _kind(text: str) -> ChangeKindName:
    name = text.upper().removeprefix("CHANGE_KIND_")
    for kind in CHANGE_KIND_NAMES:
        if kind == name:
            return kind
    raise argparse.ArgumentTypeError(f"one of {', '.join(CHANGE_KIND_NAMES)}")


def _silence_stdout() -> None:
    # Python flushes stdout again at exit and would report the broken pipe a second time.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


if __name__ == "__main__":
    sys.exit(main())
