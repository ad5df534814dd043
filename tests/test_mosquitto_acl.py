"""config/mosquitto: the example ACL lets each role do its part and nothing else."""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from broker import Mosquitto, mosquitto_binary
from paho.mqtt.enums import CallbackAPIVersion

ACL = Path(__file__).resolve().parent.parent / "config" / "mosquitto" / "edvit.acl"
USERS = {"edvit-node": "n-secret", "edvit-aggregator": "a-secret", "viewer": "v-secret"}

pytestmark = pytest.mark.skipif(mosquitto_binary() is None, reason="mosquitto is not installed")


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    broker = Mosquitto(
        tmp_path_factory.mktemp("acl"), users=USERS, extra_conf=f"acl_file {ACL}\n"
    ).start()
    yield broker
    broker.kill()


class User:
    def __init__(self, broker: Mosquitto, name: str, subscribe: str | None = None) -> None:
        self.got: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.c = paho.Client(CallbackAPIVersion.VERSION2, client_id=name)
        self.c.username_pw_set(name, USERS[name])
        self.c.on_message = lambda client, userdata, m: self.got.put((m.topic, m.payload))
        self.c.connect(broker.host, broker.port)
        self.c.loop_start()
        if subscribe:
            self.c.subscribe(subscribe, 1)
        time.sleep(0.3)

    def send(self, topic: str, payload: bytes) -> None:
        self.c.publish(topic, payload, qos=1).wait_for_publish(5)

    def received(self, wait: float = 1.0) -> list[tuple[str, bytes]]:
        out = []
        deadline = time.monotonic() + wait
        while (left := deadline - time.monotonic()) > 0:
            try:
                out.append(self.got.get(timeout=left))
            except queue.Empty:
                break
        return out

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def test_roles(secured: Mosquitto) -> None:
    aggregator = User(secured, "edvit-aggregator", "edvit/+/feat/+")
    viewer = User(secured, "viewer", "edvit/#")
    node = User(secured, "edvit-node")
    node.send("edvit/site/feat/g0", b"features")
    node.send("edvit/site/result", b"forged result")  # not a node's to send
    assert aggregator.received() == [("edvit/site/feat/g0", b"features")]
    assert viewer.received() == []  # features are not for viewers, forged result dropped
    aggregator.send("edvit/site/result", b'{"label": "3"}')
    viewer.send("edvit/site/feat/g1", b"forged features")  # viewers only read
    assert viewer.received() == [("edvit/site/result", b'{"label": "3"}')]
    assert aggregator.received() == []
    for user in (aggregator, viewer, node):
        user.close()
