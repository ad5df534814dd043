"""edvit.mqtt against a real mosquitto: status, resubscribe after a broker restart, auth."""

from __future__ import annotations

import queue
import time
from pathlib import Path

import pytest

from edvit.config.site import BrokerConfig
from edvit.mqtt import AuthError, IdentityError, Message, MqttClient, MqttError

from broker import Mosquitto, Subscriber, free_port

STATUS = "edvit/t/aggregator/status"


def broker_cfg(broker: Mosquitto, **kw: object) -> BrokerConfig:
    return BrokerConfig.model_validate({"host": broker.host, "port": broker.port, **kw})


def retained_status(broker: Mosquitto, want: str, timeout: float = 10.0) -> None:
    """A fresh subscriber sees the retained status `want` (retry: it may still be on its way)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        sub = Subscriber(broker, [STATUS])
        try:
            msg = sub.wait_for(lambda m: m.retain, timeout=1.0)
            last = msg.payload.decode()
            if last == want:
                return
        except TimeoutError:
            pass
        finally:
            sub.close()
        time.sleep(0.1)
    raise AssertionError(f"retained status is {last!r}, expected {want!r}")


def test_status_subscribe_publish_stop(mosquitto: Mosquitto) -> None:
    inbox: queue.Queue[Message] = queue.Queue(maxsize=100)
    client = MqttClient(
        broker_cfg(mosquitto),
        client_id="edvit-t-test",
        status_topic=STATUS,
        subscriptions=[("edvit/t/feat/+", 1)],
        inbox=inbox,
    )
    assert client.connect_and_wait(10)
    retained_status(mosquitto, "online")
    peer = Subscriber(mosquitto, ["edvit/t/out"])
    peer.publish("edvit/t/feat/g0", b"\x01\x02")
    msg = inbox.get(timeout=5)
    assert (msg.topic, msg.payload, msg.qos) == ("edvit/t/feat/g0", b"\x01\x02", 1)
    client.publish_json("edvit/t/out", {"a": 1}, qos=1).wait_for_publish(5)
    assert peer.wait_for(lambda m: m.topic == "edvit/t/out").payload == b'{"a":1}'
    with pytest.raises(ValueError, match="JSON"):
        client.publish_json("edvit/t/out", {"a": float("nan")})
    client.stop()
    client.stop()  # idempotent
    retained_status(mosquitto, "stopped")
    peer.close()


def test_broker_restart_reconnects_and_resubscribes(mosquitto: Mosquitto) -> None:
    inbox: queue.Queue[Message] = queue.Queue(maxsize=100)
    client = MqttClient(
        broker_cfg(mosquitto),
        client_id="edvit-t-restart",
        status_topic=STATUS,
        subscriptions=[("edvit/t/feat/+", 1)],
        inbox=inbox,
    )
    client.publish_on_connect("homeassistant/sensor/t/config", "{}")
    assert client.connect_and_wait(10)
    mosquitto.restart()  # no persistence: subscriptions and retained messages are gone
    deadline = time.monotonic() + 15
    while client.reconnects < 1:
        assert time.monotonic() < deadline, f"no reconnect: {client.last_error}"
        time.sleep(0.05)
    assert client.wait_connected(10)
    retained_status(mosquitto, "online")  # re-published on connect
    peer = Subscriber(mosquitto, ["homeassistant/#"])
    assert peer.wait_for(lambda m: m.retain).payload == b"{}"
    peer.publish("edvit/t/feat/g1", b"after restart")
    assert inbox.get(timeout=5).payload == b"after restart"  # resubscribed
    client.stop()
    peer.close()


def test_full_inbox_drops_and_counts(mosquitto: Mosquitto) -> None:
    inbox: queue.Queue[Message] = queue.Queue(maxsize=2)
    client = MqttClient(
        broker_cfg(mosquitto),
        client_id="edvit-t-full",
        status_topic=STATUS,
        subscriptions=[("edvit/t/feat/+", 1)],
        inbox=inbox,
    )
    assert client.connect_and_wait(10)
    peer = Subscriber(mosquitto, [])
    for i in range(5):
        peer.publish("edvit/t/feat/g0", str(i))
    deadline = time.monotonic() + 5
    while client.dropped < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert (inbox.qsize(), client.dropped) == (2, 3)
    client.stop()
    peer.close()


def test_no_broker_times_out(tmp_path: Path) -> None:
    cfg = BrokerConfig(host="127.0.0.1", port=free_port())
    client = MqttClient(cfg, client_id="edvit-t-none", status_topic=STATUS)
    assert client.connect_and_wait(1.0) is False
    assert client.last_error is not None
    client.stop()


def test_password_from_environment_and_refusal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker = Mosquitto(tmp_path / "auth", users={"edvit": "right"}).start()
    try:
        monkeypatch.setenv("EDVIT_MQTT_PASSWORD", "right")
        good = MqttClient(
            broker_cfg(broker), client_id="edvit-t-auth", login="edvit", status_topic=STATUS
        )
        assert good.connect_and_wait(10)
        good.stop()
        monkeypatch.setenv("EDVIT_MQTT_PASSWORD", "wrong")
        bad = MqttClient(
            broker_cfg(broker), client_id="edvit-t-bad", login="edvit", status_topic=STATUS
        )
        start = time.monotonic()
        with pytest.raises(AuthError, match="refused the login 'edvit' 3 times: Not authorized"):
            bad.connect_and_wait(20)
        assert time.monotonic() - start < 10  # a bounded retry, not for ever
        bad.stop()
    finally:
        broker.kill()


def test_two_processes_with_one_identity_both_give_up(mosquitto: Mosquitto) -> None:
    """Same login, same client id: each connect takes the other's session over; both see the
    other's session token and end with IdentityError instead of a silent reconnect loop."""
    cfg = broker_cfg(mosquitto)
    failed: dict[str, MqttError] = {}
    clients = [
        MqttClient(
            cfg,
            client_id="edvit-t-twin",
            login="twin",
            status_topic=STATUS,
            session_topic="edvit/t/node/twin/session",
            on_fatal=lambda exc, name=name: failed.setdefault(name, exc),
        )
        for name in ("first", "second")
    ]
    assert clients[0].connect_and_wait(10)
    clients[1].start()
    deadline = time.monotonic() + 30
    while len(failed) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    for client in clients:
        client.stop()
    assert set(failed) == {"first", "second"}
    for exc in failed.values():
        assert isinstance(exc, IdentityError)
        assert "another process uses the login 'twin'" in str(exc)


def test_one_process_restarting_is_no_identity_clash(mosquitto: Mosquitto) -> None:
    """A clean stop clears the session token: the next process of the same identity starts
    without a warning, and a single stale token (a crash) is tolerated."""
    cfg = broker_cfg(mosquitto)
    topic = "edvit/t/node/solo/session"
    for _ in range(3):
        client = MqttClient(
            cfg, client_id="edvit-t-solo", login="solo", status_topic=STATUS, session_topic=topic
        )
        assert client.connect_and_wait(10)
        time.sleep(0.3)
        assert client.wait_connected(0.1)  # no IdentityError raised
        client.stop()
