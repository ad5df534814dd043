"""Test helpers around the real brokers (edvit.demo.brokers) and a plain subscriber.

Everything that crosses the wire is tested against a real mosquitto, never a mocked client.
"""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from edvit.config.site import load_site_config
from edvit.demo.brokers import BrokerProcess, Mosquitto, free_port, mosquitto_binary, port_open
from edvit.provision import grants

__all__ = [
    "Mosquitto",
    "ProvisionedMosquitto",
    "Subscriber",
    "free_port",
    "mosquitto_binary",
    "port_open",
    "provision",
]


def provision(site: Path, out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`edvit site credentials SITE --out OUT`, with the broker's files read from OUT."""
    edvit = str(Path(sys.executable).parent / "edvit")
    return subprocess.run(
        [
            edvit,
            "site",
            "credentials",
            str(site),
            "--out",
            str(out),
            "--conf-dir",
            str(out / "mosquitto"),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


def passwords(site: Path, out: Path) -> dict[str, str]:
    """login → the password `edvit site credentials` wrote for it."""
    return {
        login: (out / "credentials" / g.credential).read_text().strip()
        for login, g in grants(load_site_config(site)).items()
    }


class ProvisionedMosquitto(BrokerProcess):
    """mosquitto running a provisioned site's generated edvit.conf, included as Debian's
    conf.d is, on the site config's port."""

    name = "mosquitto"

    def __init__(self, out: Path, port: int) -> None:
        binary = mosquitto_binary()
        if binary is None:
            raise RuntimeError("mosquitto is not installed")
        super().__init__(binary, "main.conf", out / "run", port)
        # as root mosquitto would switch to user `mosquitto`, who cannot read the test's files
        user = "user root\n" if os.geteuid() == 0 else ""
        self.conf.write_text(
            f"{user}persistence false\nlog_dest stderr\nlog_type all\n"
            f"include_dir {out / 'mosquitto'}\n"
        )


class Subscriber:
    """A plain paho client collecting what arrives on `topics` (retained messages too)."""

    def __init__(
        self,
        broker: BrokerProcess,
        topics: Sequence[str],
        login: tuple[str, str] | None = None,
        client_id: str = "",
    ) -> None:
        self.messages: queue.Queue[paho.MQTTMessage] = queue.Queue()
        self.seen: list[paho.MQTTMessage] = []
        self._topics = list(topics)
        self._subscribed = threading.Event()
        self._client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
        if login is not None:
            self._client.username_pw_set(*login)
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = lambda *args: self._subscribed.set()
        self._client.on_message = lambda client, userdata, msg: self.messages.put(msg)
        self._client.connect(broker.host, broker.port)
        self._client.loop_start()
        if not self._subscribed.wait(5):
            raise TimeoutError(f"could not subscribe to {topics} on {broker.address}")

    def _on_connect(self, client: paho.Client, userdata: Any, *rest: Any) -> None:
        if self._topics:
            client.subscribe([(t, 1) for t in self._topics])
        else:
            self._subscribed.set()

    def publish(self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False) -> None:
        self._client.publish(topic, payload, qos=qos, retain=retain).wait_for_publish(5)

    def wait_for(
        self, match: Callable[[paho.MQTTMessage], bool], timeout: float = 10.0
    ) -> paho.MQTTMessage:
        """The first message (already seen or arriving within `timeout`) that matches."""
        for msg in self.seen:
            if match(msg):
                return msg
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                recent = [(m.topic, bytes(m.payload)[:80]) for m in self.seen[-5:]]
                raise TimeoutError(f"no matching message within {timeout} s; last: {recent}")
            try:
                msg = self.messages.get(timeout=left)
            except queue.Empty:
                continue
            self.seen.append(msg)
            if match(msg):
                return msg

    def drain(self, quiet: float = 0.3) -> list[paho.MQTTMessage]:
        """Everything that arrives until `quiet` seconds pass without a message."""
        out = []
        while True:
            try:
                msg = self.messages.get(timeout=quiet)
            except queue.Empty:
                return out
            self.seen.append(msg)
            out.append(msg)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()
