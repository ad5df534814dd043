"""The embedded broker `edvit demo` falls back to, exercised by real paho clients."""

from __future__ import annotations

import queue
import socket
import struct
import time
from collections.abc import Iterator
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edvit import topics
from edvit.config.site import BrokerConfig
from edvit.minibroker import MiniBroker, topic_matches
from edvit.mqtt import Message, MqttClient


@pytest.fixture
def broker() -> Iterator[MiniBroker]:
    b = MiniBroker().start()
    yield b
    b.stop()


class Client:
    def __init__(self, broker: MiniBroker, subs: list[tuple[str, int]], name: str) -> None:
        self.got: queue.Queue[paho.MQTTMessage] = queue.Queue()
        self.c = paho.Client(CallbackAPIVersion.VERSION2, client_id=name)
        self.c.on_message = lambda client, userdata, msg: self.got.put(msg)
        self.c.connect(broker.host, broker.port)
        self.c.loop_start()
        if subs:
            self.c.subscribe(subs)
            time.sleep(0.2)

    def take(self, timeout: float = 5.0) -> paho.MQTTMessage:
        return self.got.get(timeout=timeout)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


@pytest.mark.parametrize(
    ("pattern", "topic", "match"),
    [
        ("a/b", "a/b", True),
        ("a/+", "a/b", True),
        ("a/+", "a/b/c", False),
        ("a/#", "a", True),
        ("a/#", "a/b/c", True),
        ("#", "$SYS/x", False),
        ("+/b", "a/c", False),
        ("edvit/+/feat/+", "edvit/home/feat/g0", True),
    ],
)
def test_topic_matching(pattern: str, topic: str, match: bool) -> None:
    assert topic_matches(pattern, topic) is match


def test_publish_subscribe_qos1_and_wildcards(broker: MiniBroker) -> None:
    sub = Client(broker, [("edvit/+/feat/#", 1)], "sub")
    pub = Client(broker, [], "pub")
    info = pub.c.publish("edvit/home/feat/g0", b"\x01\x02", qos=1)
    info.wait_for_publish(5)
    msg = sub.take()
    assert (msg.topic, msg.payload, msg.qos) == ("edvit/home/feat/g0", b"\x01\x02", 1)
    pub.c.publish("other/topic", b"x").wait_for_publish(5)
    pub.c.publish("edvit/home/result", b"y").wait_for_publish(5)
    with pytest.raises(queue.Empty):
        sub.take(timeout=0.5)
    sub.close()
    pub.close()


def test_retained_messages(broker: MiniBroker) -> None:
    pub = Client(broker, [], "pub")
    pub.c.publish("s/status", b"online", qos=1, retain=True).wait_for_publish(5)
    late = Client(broker, [("s/#", 1)], "late")
    msg = late.take()
    assert (msg.payload, msg.retain) == (b"online", True)
    pub.c.publish("s/status", b"", qos=1, retain=True).wait_for_publish(5)  # clears it
    assert late.take().payload == b""
    third = Client(broker, [("s/#", 1)], "third")
    with pytest.raises(queue.Empty):
        third.take(timeout=0.5)
    for c in (pub, late, third):
        c.close()


def _raw_connect_with_will(broker: MiniBroker, topic: str, message: bytes) -> socket.socket:
    """A client that connects with a last will and then vanishes without DISCONNECT."""
    body = (
        struct.pack("!H", 4) + b"MQTT"
        + bytes([4, 0x02 | 0x04 | 0x08 | 0x20]) + struct.pack("!H", 30)
        + struct.pack("!H", 3) + b"raw"
        + struct.pack("!H", len(topic)) + topic.encode()
        + struct.pack("!H", len(message)) + message
    )  # fmt: skip
    sock = socket.create_connection((broker.host, broker.port))
    sock.sendall(bytes([0x10, len(body)]) + body)
    assert sock.recv(4) == b"\x20\x02\x00\x00"  # CONNACK accepted
    return sock


def test_last_will_on_a_lost_connection_only(broker: MiniBroker) -> None:
    watcher = Client(broker, [("n/#", 1)], "watcher")
    sock = _raw_connect_with_will(broker, "n/status", b"offline")
    sock.close()
    msg = watcher.take()
    assert (msg.topic, msg.payload) == ("n/status", b"offline")
    # and a clean DISCONNECT sends no will
    sock = _raw_connect_with_will(broker, "n/status", b"offline")
    sock.sendall(b"\xe0\x00")
    sock.close()
    with pytest.raises(queue.Empty):
        watcher.take(timeout=0.5)
    watcher.close()


def test_the_services_client_works_against_it(broker: MiniBroker) -> None:
    inbox: queue.Queue[Message] = queue.Queue(maxsize=100)
    status = topics.node_status("demo", "n1")
    watcher = Client(broker, [(status, 1)], "watcher")
    client = MqttClient(
        BrokerConfig(host=broker.host, port=broker.port),
        client_id="n1",
        status_topic=status,
        subscriptions=[(topics.result("demo"), 1)],
        inbox=inbox,
    )
    assert client.connect_and_wait(5)
    assert watcher.take().payload == b"online"
    watcher.c.publish(topics.result("demo"), b'{"tick": 1}', qos=1).wait_for_publish(5)
    got: Any = inbox.get(timeout=5)
    assert got.payload == b'{"tick": 1}'
    client.stop()
    assert watcher.take().payload == b"stopped"
    watcher.close()
