"""Test helpers around the real brokers (edvit.demo.brokers) and a plain subscriber.

Everything that crosses the wire is tested against a real mosquitto, never a mocked client.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from edvit.demo.brokers import BrokerProcess, Mosquitto, free_port, mosquitto_binary, port_open

__all__ = ["Mosquitto", "Subscriber", "free_port", "mosquitto_binary", "port_open"]


class Subscriber:
    """A plain paho client collecting what arrives on `topics` (retained messages too)."""

    def __init__(self, broker: BrokerProcess, topics: Sequence[str]) -> None:
        self.messages: queue.Queue[paho.MQTTMessage] = queue.Queue()
        self.seen: list[paho.MQTTMessage] = []
        self._topics = list(topics)
        self._subscribed = threading.Event()
        self._client = paho.Client(CallbackAPIVersion.VERSION2)
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
