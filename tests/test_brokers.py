"""The two brokers `edvit demo` runs (mosquitto, amqtt) do what the services rely on.

QoS 1 with wildcards, retained messages (set and cleared), a last will on a lost connection
only, and the services' own client, each checked with real paho clients on both brokers.
"""

from __future__ import annotations

import importlib.util
import queue
import socket
import struct
from collections.abc import Iterator

import pytest

from edvit import topics
from edvit.config.site import BrokerConfig
from edvit.demo.brokers import Amqtt, BrokerProcess, Mosquitto, mosquitto_binary
from edvit.mqtt import Message, MqttClient

from broker import Subscriber


@pytest.fixture(params=["mosquitto", "amqtt"])
def broker(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BrokerProcess]:
    workdir = tmp_path_factory.mktemp(request.param)
    b: BrokerProcess
    if request.param == "mosquitto":
        if mosquitto_binary() is None:
            pytest.skip("mosquitto is not installed (apt-get install mosquitto; scripts/setup.sh)")
        b = Mosquitto(workdir)
    else:
        if importlib.util.find_spec("amqtt") is None:
            pytest.skip("amqtt is not installed (pip install -e '.[demo]')")
        b = Amqtt(workdir)
    b.start()
    try:
        yield b
    finally:
        b.kill()


def test_qos1_and_wildcards(broker: BrokerProcess) -> None:
    sub = Subscriber(broker, ["edvit/+/feat/#"])
    pub = Subscriber(broker, [])
    pub.publish("edvit/home/feat/g0", b"\x01\x02")
    msg = sub.wait_for(lambda m: True, timeout=5)
    assert (msg.topic, msg.payload, msg.qos) == ("edvit/home/feat/g0", b"\x01\x02", 1)
    pub.publish("other/topic", b"x")
    pub.publish("edvit/home/result", b"y")
    assert sub.drain(quiet=0.5) == []
    sub.close()
    pub.close()


def test_retained_messages_are_kept_and_cleared(broker: BrokerProcess) -> None:
    pub = Subscriber(broker, [])
    pub.publish("s/status", b"online", retain=True)
    late = Subscriber(broker, ["s/#"])
    msg = late.wait_for(lambda m: True, timeout=5)
    assert (msg.payload, msg.retain) == (b"online", True)
    pub.publish("s/status", b"", retain=True)  # clears it
    late.wait_for(lambda m: m.payload == b"", timeout=5)
    third = Subscriber(broker, ["s/#"])
    assert third.drain(quiet=0.5) == []
    for c in (pub, late, third):
        c.close()


def _connect_with_will(broker: BrokerProcess, topic: str, message: bytes) -> socket.socket:
    """A raw MQTT 3.1.1 client with a retained QoS 1 last will (it can vanish at will)."""
    flags = 0x02 | 0x04 | 0x08 | 0x20  # clean session, will, will QoS 1, will retain
    body = (
        struct.pack("!H", 4) + b"MQTT" + bytes([4, flags]) + struct.pack("!H", 30)
        + struct.pack("!H", 3) + b"raw"
        + struct.pack("!H", len(topic)) + topic.encode()
        + struct.pack("!H", len(message)) + message
    )  # fmt: skip
    sock = socket.create_connection((broker.host, broker.port))
    sock.sendall(bytes([0x10, len(body)]) + body)
    assert sock.recv(4) == b"\x20\x02\x00\x00"  # CONNACK, accepted
    return sock


def test_last_will_on_a_lost_connection_only(broker: BrokerProcess) -> None:
    watcher = Subscriber(broker, ["n/#"])
    _connect_with_will(broker, "n/status", b"offline").close()
    msg = watcher.wait_for(lambda m: True, timeout=5)
    assert (msg.topic, msg.payload) == ("n/status", b"offline")
    late = Subscriber(broker, ["n/#"])  # the will was retained
    assert late.wait_for(lambda m: True, timeout=5).payload == b"offline"
    sock = _connect_with_will(broker, "n/status", b"offline")
    # A PINGREQ round trip first: amqtt sends the will if DISCONNECT comes in the same instant
    # as CONNECT; and it pushes retained messages nobody asked for, so read up to PINGRESP.
    sock.sendall(b"\xc0\x00")
    received = b""
    while not received.endswith(b"\xd0\x00"):
        received += sock.recv(4096)
    sock.sendall(b"\xe0\x00")  # a clean DISCONNECT sends no will
    sock.close()
    assert watcher.drain(quiet=0.5) == []
    watcher.close()
    late.close()


def test_the_services_client_works_against_it(broker: BrokerProcess) -> None:
    inbox: queue.Queue[Message] = queue.Queue(maxsize=100)
    status = topics.node_status("demo", "n1")
    watcher = Subscriber(broker, [status])
    client = MqttClient(
        BrokerConfig(host=broker.host, port=broker.port),
        client_id="n1",
        status_topic=status,
        subscriptions=[(topics.result("demo"), 1)],
        inbox=inbox,
    )
    assert client.connect_and_wait(5)
    watcher.wait_for(lambda m: m.payload == b"online", timeout=5)
    watcher.publish(topics.result("demo"), b'{"tick": 1}')
    assert inbox.get(timeout=5).payload == b'{"tick": 1}'
    client.stop()
    watcher.wait_for(lambda m: m.payload == b"stopped", timeout=5)
    watcher.close()
