"""systemd's sd_notify protocol in plain socket code (no libsystemd binding needed).

With `Type=notify` systemd waits for READY=1 before it counts a service as started (so
units ordered after it start only when it works), and with `WatchdogSec=` it restarts a
service that stops sending WATCHDOG=1 — a hung process, not just a dead one. Outside systemd
(no NOTIFY_SOCKET) every call is a no-op, so the same code runs by hand and in tests.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

log = logging.getLogger(__name__)


def _address(environ: Mapping[str, str]) -> str | None:
    path = environ.get("NOTIFY_SOCKET")
    if not path:
        return None
    if path.startswith("@"):  # abstract namespace socket
        return "\0" + path[1:]
    return path


def notify(state: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send `state` (e.g. "READY=1", "WATCHDOG=1", "STOPPING=1", "STATUS=…").

    Returns True when sent, False without NOTIFY_SOCKET or when the send failed (logged:
    a notification must never take the service down).
    """
    env = os.environ if environ is None else environ
    address = _address(env)
    if address is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode("utf-8"))
    except OSError as exc:
        log.warning("sd_notify %r to %s failed: %s", state, env.get("NOTIFY_SOCKET"), exc)
        return False
    return True


def ready(environ: Mapping[str, str] | None = None) -> bool:
    return notify("READY=1", environ)


def stopping(environ: Mapping[str, str] | None = None) -> bool:
    return notify("STOPPING=1", environ)


def status(text: str, environ: Mapping[str, str] | None = None) -> bool:
    """A one-line status shown by `systemctl status`."""
    return notify("STATUS=" + text.replace("\n", " "), environ)


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """WatchdogSec in seconds if systemd expects WATCHDOG=1 from this process, else None.

    WATCHDOG_PID, when set, names the process meant (a child inheriting the environment
    must not think it is watched).
    """
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 1e6 if value > 0 else None


class Watchdog:
    """Sends WATCHDOG=1 at most every half interval: call `kick()` from the loop that must
    keep running; if that loop hangs, the kicks stop and systemd restarts the service."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._environ = environ
        self.interval = watchdog_interval(environ)
        self._last = float("-inf")

    @property
    def enabled(self) -> bool:
        return self.interval is not None

    def kick(self) -> bool:
        """True if a WATCHDOG=1 was sent now."""
        if self.interval is None:
            return False
        now = time.monotonic()
        if now - self._last < self.interval / 2:
            return False
        self._last = now
        return notify("WATCHDOG=1", self._environ)
