"""What the long-running services (edge node, aggregator) share: how they start, wait for
the broker, run until SIGTERM/SIGINT, and map failures to exit codes systemd acts on.

Exit codes: 0 after a clean stop; 1 for what a restart may cure (a broker that never
answered, a lost device: systemd retries); and, for what only a person can fix, 2 for a
config or bundle that cannot work, 3 for a broker that keeps refusing our login, 4 for a
login another process uses too, 5 for TLS that cannot work (certificate verify failed,
host name mismatch, a client certificate the broker wants). The units'
RestartPreventExitStatus= lists 2 3 4 5.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

from edvit import sdnotify
from edvit.config.site import parse_broker
from edvit.mqtt import AuthError, IdentityError, MqttClient, MqttError, TlsError
from edvit.tlscheck import tls_problem

log = logging.getLogger(__name__)

EXIT_OK, EXIT_RETRY, EXIT_CONFIG, EXIT_AUTH, EXIT_IDENTITY, EXIT_TLS = 0, 1, 2, 3, 4, 5
FATAL_EXITS = (EXIT_CONFIG, EXIT_AUTH, EXIT_IDENTITY, EXIT_TLS)  # RestartPreventExitStatus=
TLS_CHECK_AFTER = 3  # failed connects before the TLS handshake is examined


class ServiceFailedError(Exception):
    """The service ended by itself on something a restart may cure (exit 1)."""


def exit_code(exc: BaseException) -> int:
    """The exit code for why a service could not start or ended (see the module doc)."""
    codes = [(AuthError, EXIT_AUTH), (IdentityError, EXIT_IDENTITY), (TlsError, EXIT_TLS)]
    codes.append((MqttError, EXIT_CONFIG))  # e.g. TLS files that cannot be read
    return next((code for kind, code in codes if isinstance(exc, kind)), EXIT_RETRY)


class StartCancelledError(Exception):
    """start() was interrupted by a stop request (SIGTERM while waiting for the broker)."""


class StartError(Exception):
    """The service cannot start for now: the broker did not answer, or a device is absent."""


class Service(Protocol):
    error: Exception | None  # set when the service ends by itself; why

    def start(self, connect_timeout: float | None = None) -> None: ...
    def stop(self) -> None: ...


def _broker_arg(text: str) -> str:
    try:
        parse_broker(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def add_run_args(run: argparse.ArgumentParser, validate_help: str) -> None:
    """The options every `... run` command takes, the way systemd passes them."""
    run.add_argument("--bundle", required=True, type=Path, help="bundle directory")
    run.add_argument("--config", required=True, type=Path, help="site config (YAML)")
    run.add_argument(
        "--broker", type=_broker_arg, metavar="HOST:PORT", help="override the config's broker"
    )
    run.add_argument("--validate-config", action="store_true", help=validate_help)
    run.add_argument(
        "--connect-timeout",
        type=float,
        metavar="S",
        help="give up when the broker has not answered after S seconds (default: wait)",
    )
    run.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])


def run_cli(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> int:
    """Parse `argv` and run the chosen sub-command's `func`; what it returns is the exit code."""
    args = parser.parse_args(argv)
    return int(args.func(args))


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level, format="%(name)s: %(levelname)s: %(message)s", stream=sys.stderr
    )


def stop_on_signals() -> threading.Event:
    """An event set by SIGTERM (systemd stop) or SIGINT (Ctrl-C)."""
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return stop


def wait_for_broker(client: MqttClient, timeout: float | None, cancel: threading.Event) -> None:
    """Start the client and wait until the broker answers (paho keeps retrying); log while
    waiting; StartCancelledError on a stop request, StartError after `timeout` seconds,
    AuthError when the login keeps being refused, TlsError when the TLS handshake fails in
    a way retrying will not fix."""
    client.start()
    tls_checked = client.broker.tls is None
    waited = 0.0
    deadline = None if timeout is None else time.monotonic() + timeout
    while not client.wait_connected(1.0):
        if cancel.is_set():
            raise StartCancelledError
        waited += 1.0
        if not tls_checked and client.connect_failures >= TLS_CHECK_AFTER:
            tls_checked = True
            problem = tls_problem(client.broker)
            if problem is not None:
                raise TlsError(problem.message)
        if deadline is not None and time.monotonic() >= deadline:
            raise StartError(
                f"the broker at {client.address} did not answer within {timeout:g} s "
                f"({client.last_error or 'no answer'})"
            )
        if waited % 5 == 0:
            log.warning("waiting for the broker at %s (%s)", client.address, client.last_error)


def begin_stop(
    stopping: threading.Event,
    cancel: threading.Event,
    threads: Sequence[threading.Thread | None],
    timeout: float,
) -> bool:
    """The first steps of a service's stop(): mark it stopping, cancel a start() still
    waiting, tell systemd, join `threads`. False when stop() already ran (it is idempotent)."""
    if stopping.is_set():
        return False
    stopping.set()
    cancel.set()
    sdnotify.stopping()
    for thread in threads:
        if thread is not None:
            thread.join(timeout=timeout)
            if thread.is_alive():
                log.warning("%s did not end within %g s", thread.name, timeout)
    return True


def service_parser(
    prog: str, description: str, validate_help: str
) -> tuple[argparse.ArgumentParser, argparse._SubParsersAction[Any], argparse.ArgumentParser]:
    """A service's command line: the parser, its sub-commands, and `run` (add_run_args)."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run until SIGTERM (systemd stop) or Ctrl-C")
    add_run_args(run, validate_help)
    return parser, sub, run


def spawn(name: str, target: Callable[[], None]) -> threading.Thread:
    """A daemon thread, started."""
    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    return thread


def serve(
    app: Service,
    name: str,
    stop: threading.Event,
    connect_timeout: float | None,
    config_errors: tuple[type[Exception], ...],
) -> int:
    """Start `app`, run until `stop` is set, stop it; the exit code (see the module doc)."""
    try:
        app.start(connect_timeout=connect_timeout)
    except StartCancelledError:
        app.stop()
        return EXIT_OK
    except config_errors as exc:
        app.stop()
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    except (MqttError, StartError) as exc:
        app.stop()
        print(f"{name}: {exc}", file=sys.stderr)
        return exit_code(exc)
    while not stop.wait(1.0):
        pass
    log.info("stopping")
    app.stop()
    if app.error is not None:
        print(f"{name}: {app.error}", file=sys.stderr)
        return exit_code(app.error)
    return EXIT_OK
