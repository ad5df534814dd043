"""A private MQTT broker as a child process: loopback, a free port, its own config and log.

`edvit demo` runs the site on one machine with one, and the tests run everything that
crosses the wire against one (never a mocked client). Two maintained brokers: mosquitto
(what a site runs; `scripts/setup.sh` installs it) and, where it is missing, the Python
broker amqtt (`pip install 'edvit[demo]'`). Both are anonymous, MQTT 3.1.1, no persistence.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Self

import yaml


class BrokerError(RuntimeError):
    """The broker is missing, or did not come up."""


CANDIDATES = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")


def mosquitto_binary() -> str | None:
    """The mosquitto executable (Debian installs it in /usr/sbin, often not on PATH)."""
    found = shutil.which("mosquitto")
    if found:
        return found
    return next((c for c in CANDIDATES if os.access(c, os.X_OK)), None)


def installed_command(name: str) -> str | None:
    """A console script of this install (next to the interpreter), else one from PATH."""
    here = Path(sys.executable).parent / name
    return str(here) if here.exists() else shutil.which(name)


def amqtt_binary() -> str | None:
    """amqtt's broker command, installed with the `demo` extra."""
    return installed_command("amqtt")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


class BrokerProcess:
    """`binary -c <config>` on 127.0.0.1:<port>; subclasses write the config file."""

    name = "broker"

    def __init__(self, binary: str, config: str, workdir: Path, port: int | None) -> None:
        self.binary = binary
        self.host = "127.0.0.1"
        self.port = port if port is not None else free_port()
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.conf = self.workdir / config
        self.log = self.workdir / f"{self.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        return [self.binary, "-c", str(self.conf)]

    @property
    def address(self) -> str:
        """HOST:PORT, as `--broker` takes it."""
        return f"{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> Self:
        if self.proc is not None and self.proc.poll() is None:
            return self
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        deadline = time.monotonic() + timeout
        while not port_open(self.host, self.port):
            if self.proc.poll() is not None:
                raise BrokerError(
                    f"{self.name} exited with {self.proc.returncode}:\n{self.log_text()[-2000:]}"
                )
            if time.monotonic() > deadline:
                self.kill()
                raise BrokerError(f"{self.name} did not listen on {self.address} in {timeout} s")
            time.sleep(0.02)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM and wait (clients see their connection close)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL: the broker vanishes without a goodbye."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.kill()
        self.proc.wait(5)

    def restart(self) -> None:
        """Stop and start again on the same port (retained messages are gone: no persistence)."""
        self.stop()
        self.start()

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Mosquitto(BrokerProcess):
    """mosquitto, logging to a file.

    Anonymous by default; `users={name: password}` makes it require those credentials
    (a password file made with mosquitto_passwd); `extra_conf` is appended to its config.
    """

    name = "mosquitto"

    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        extra_conf: str = "",
        users: dict[str, str] | None = None,
    ) -> None:
        binary = mosquitto_binary()
        if binary is None:
            raise BrokerError("mosquitto is not installed (Debian package: mosquitto)")
        super().__init__(binary, "mosquitto.conf", workdir, port)
        auth = "allow_anonymous true\n"
        if users:
            passwd = self.workdir / "passwd"
            passwd.write_text("")
            for name, password in users.items():
                subprocess.run(
                    ["mosquitto_passwd", "-b", str(passwd), name, password],
                    check=True,
                    capture_output=True,
                )
            passwd.chmod(0o644)
            auth = f"allow_anonymous false\npassword_file {passwd}\n"
        # As root mosquitto would switch to user `mosquitto`, who cannot read the test's files.
        user = "user root\n" if os.geteuid() == 0 else ""
        self.conf.write_text(
            f"listener {self.port} {self.host}\n" + user + auth + "persistence false\n"
            "set_tcp_nodelay true\n"
            "log_dest stderr\n"
            "log_type error\nlog_type warning\nlog_type notice\nlog_type information\n"
            "connection_messages true\n" + extra_conf
        )


class Amqtt(BrokerProcess):
    """amqtt, the maintained Python broker: anonymous, no `$SYS` topics, logging to a file.

    Unlike mosquitto, amqtt 0.12 sends a client, as it connects, the retained messages of
    every topic filter anyone has subscribed to (the demo's aggregator logs one dropped
    status message for it); a site runs mosquitto.
    """

    name = "amqtt"

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        binary = amqtt_binary()
        if binary is None:
            raise BrokerError("amqtt is not installed: pip install 'edvit[demo]'")
        super().__init__(binary, "amqtt.yaml", workdir, port)
        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}
            },
        }
        self.conf.write_text(yaml.safe_dump(config, sort_keys=False))
