"""edvit.sdnotify against a real unix datagram socket, as systemd listens on one."""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from edvit import sdnotify


@pytest.fixture
def listener() -> Iterator[tuple[socket.socket, str]]:
    """A bound datagram socket in a short /tmp path (unix paths are limited to 107 bytes)."""
    folder = tempfile.mkdtemp(prefix="sdn-")
    path = os.path.join(folder, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(2)
    try:
        yield sock, path
    finally:
        sock.close()
        os.unlink(path)
        os.rmdir(folder)


def test_ready_and_watchdog_reach_the_socket(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    env = {"NOTIFY_SOCKET": path}
    assert sdnotify.ready(env)
    assert sock.recv(256) == b"READY=1"
    assert sdnotify.notify("WATCHDOG=1", env)
    assert sock.recv(256) == b"WATCHDOG=1"
    assert sdnotify.status("fusing\n5 sub-models", env)
    assert sock.recv(256) == b"STATUS=fusing 5 sub-models"
    assert sdnotify.stopping(env)
    assert sock.recv(256) == b"STOPPING=1"


def test_abstract_namespace_socket() -> None:
    name = f"edvit-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2)
        assert sdnotify.ready({"NOTIFY_SOCKET": "@" + name})
        assert sock.recv(256) == b"READY=1"


def test_without_notify_socket_it_is_a_no_op() -> None:
    assert sdnotify.notify("READY=1", {}) is False
    assert sdnotify.watchdog_interval({}) is None
    assert sdnotify.Watchdog({}).kick() is False


def test_a_missing_socket_is_logged_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert sdnotify.ready({"NOTIFY_SOCKET": str(tmp_path / "gone")}) is False
    assert "sd_notify" in caplog.text


def test_watchdog_interval() -> None:
    pid = str(os.getpid())
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "3000000"}) == 3.0
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": pid}) == 3.0
    # meant for another process (a parent's environment inherited by a child)
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "1"}) is None
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "junk"}) is None
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "0"}) is None


def test_watchdog_kicks_at_most_every_half_interval(
    listener: tuple[socket.socket, str],
) -> None:
    sock, path = listener
    dog = sdnotify.Watchdog({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "60000000"})
    assert dog.enabled
    assert dog.interval == 60.0
    assert dog.kick() is True
    assert sock.recv(256) == b"WATCHDOG=1"
    assert dog.kick() is False  # 30 s have not passed
