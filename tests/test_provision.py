"""`edvit site credentials` against a real mosquitto run from the files it writes: each
login does its part and nothing else, as an attacker with one login's password finds out."""

from __future__ import annotations

import queue
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from edvit.config.site import load_site_config
from edvit.demo.brokers import BrokerProcess
from edvit.provision import acl_text, broker_conf, mosquitto_hash

from broker import ProvisionedMosquitto, free_port, mosquitto_binary, passwords, provision

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parent.parent
SITE = "yard"

pytestmark = pytest.mark.skipif(mosquitto_binary() is None, reason="mosquitto is not installed")


def site_dict(port: int, **extra: Any) -> dict[str, Any]:
    images = {"kind": "images", "folder": "."}
    return {
        "site": SITE,
        "broker": {"host": "127.0.0.1", "port": port},
        "nodes": {
            "cam-1": {"source": images, "submodels": ["g0"], "publish_frames": True},
            "cam-2": {"source": images, "submodels": ["g1"], "mqtt_user": "pi-kitchen"},
            "relay-1": {"source": {"kind": "relay", "camera": "cam-1"}, "submodels": ["g2"]},
        },
        "aggregator": {"max_message_bytes": 65536},
        "readers": ["homeassistant"],
        **extra,
    }


def credentials(site: Path, out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "edvit"), "site", "credentials", str(site), "--out", str(out), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


class Client:
    """A plain paho client logged in as `user`: what it receives, whether it was dropped."""

    def __init__(
        self,
        broker: BrokerProcess,
        user: str | None,
        password: str | None,
        subscribe: str | None = None,
        client_id: str = "",
        paho_client: paho.Client | None = None,
    ) -> None:
        self.got: queue.Queue[tuple[str, bytes, bool]] = queue.Queue()
        self.connack: queue.Queue[str] = queue.Queue()
        self.dropped = threading.Event()
        self.c = paho_client or paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
        if user is not None:
            self.c.username_pw_set(user, password)
        self.c.on_message = lambda c, u, m: self.got.put((m.topic, m.payload, m.retain))
        self.c.on_connect = lambda c, u, f, rc, p: self.connack.put(str(rc))
        self.c.on_disconnect = lambda c, u, f, rc, p: self.dropped.set()
        self._subscribe = subscribe
        self.c.connect(broker.host, broker.port)
        self.c.loop_start()
        self.rc = self.connack.get(timeout=5)
        if subscribe and self.rc == "Success":
            self.c.subscribe(subscribe, 1)
            time.sleep(0.3)

    def send(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self.c.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)

    def received(self, wait: float = 1.0) -> list[tuple[str, bytes]]:
        out = []
        deadline = time.monotonic() + wait
        while (left := deadline - time.monotonic()) > 0:
            try:
                topic, payload, _ = self.got.get(timeout=left)
            except queue.Empty:
                break
            out.append((topic, payload))
        return out

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


@pytest.fixture(scope="module")
def site(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[ProvisionedMosquitto, dict[str, str]]]:
    """A provisioned site's broker and every login's password."""
    d = tmp_path_factory.mktemp("provisioned")
    path = d / "site.yaml"
    path.write_text(yaml.safe_dump(site_dict(free_port())))
    out = d / "out"
    proc = provision(path, out, "--bind", "127.0.0.1")
    assert proc.returncode == 0, proc.stderr
    logins = passwords(path, out)
    assert sorted(logins) == ["aggregator", "cam-1", "homeassistant", "pi-kitchen", "relay-1"]
    port = load_site_config(path).broker.port
    broker = ProvisionedMosquitto(out, port).start()
    yield broker, logins
    broker.kill()


def login(site: tuple[ProvisionedMosquitto, dict[str, str]], user: str, **kw: Any) -> Client:
    broker, logins = site
    return Client(broker, user, logins[user], **kw)


def test_files_modes_and_kept_passwords(tmp_path: Path) -> None:
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(site_dict(1883)))
    out = tmp_path / "out"
    proc = credentials(path, out)
    assert proc.returncode == 0, proc.stderr
    creds = sorted(p.name for p in (out / "credentials").iterdir())
    assert creds == [
        "aggregator", "node-cam-1", "node-cam-2", "node-relay-1", "reader-homeassistant"
    ]  # fmt: skip
    for p in [*(out / "credentials").iterdir(), out / "mosquitto/passwd", out / "mosquitto/acl"]:
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
    first = {p.name: p.read_text() for p in (out / "credentials").iterdir()}
    assert len(set(first.values())) == 5  # a password of its own for each login
    conf = (out / "mosquitto/edvit.conf").read_text()
    assert "allow_anonymous false" in conf
    assert "use_username_as_clientid true" in conf
    assert "password_file /etc/mosquitto/edvit/passwd" in conf
    assert "max_packet_size 8392704" in conf  # a relayed frame (8 MiB) + the header allowance
    # a node added: its password is new, every other one kept (no host needs a new one)
    more = site_dict(1883)
    more["nodes"]["cam-9"] = {"source": {"kind": "images", "folder": "."}, "submodels": ["g3"]}
    path.write_text(yaml.safe_dump(more))
    proc = credentials(path, out)
    assert proc.returncode == 0, proc.stderr
    assert "node-cam-9: new password of 'cam-9'" in proc.stdout
    again = {p.name: p.read_text() for p in (out / "credentials").iterdir()}
    assert {k: again[k] for k in first} == first
    assert "node-cam-9" in again
    assert "user cam-9" in (out / "mosquitto/acl").read_text()


def test_sites_that_cannot_be_provisioned(tmp_path: Path) -> None:
    path = tmp_path / "site.yaml"
    for auth, message in [
        ("none", "broker.auth: is 'none' (anonymous): there is nothing to provision"),
        ("certificate", "broker.auth: 'certificate' needs client certificates: add --ca"),
    ]:
        cfg = site_dict(1883)
        cfg["broker"]["auth"] = auth
        path.write_text(yaml.safe_dump(cfg))
        proc = credentials(path, tmp_path / auth)
        assert proc.returncode == 2, proc.stderr
        assert message in proc.stderr
    cfg = site_dict(1883, readers=["cam-1"])  # a reader with a node's login
    path.write_text(yaml.safe_dump(cfg))
    proc = credentials(path, tmp_path / "dup")
    assert proc.returncode == 2
    assert "readers[0]" in proc.stderr
    assert "already nodes.cam-1.mqtt_user's" in proc.stderr


def test_the_shipped_examples_are_what_the_command_writes() -> None:
    cfg = load_site_config(REPO / "config" / "site.example.yaml")
    shipped = REPO / "config" / "mosquitto"
    assert (shipped / "edvit.acl").read_text() == acl_text(cfg)
    assert (shipped / "edvit.conf").read_text() == broker_conf(cfg, bind=None)


def test_hashes_are_what_mosquitto_accepts(
    site: tuple[ProvisionedMosquitto, dict[str, str]],
) -> None:
    broker, logins = site
    for user in logins:
        client = login(site, user)
        assert client.rc == "Success", user
        client.close()
    refused = [
        Client(broker, "cam-1", "wrong"),
        Client(broker, "cam-1", logins["aggregator"]),  # another login's password
        Client(broker, "stranger", "x"),
        Client(broker, None, None),  # anonymous
    ]
    assert [c.rc for c in refused] == ["Not authorized"] * 4
    for c in refused:
        c.close()
    salt = bytes(range(12))  # mosquitto_passwd's format, byte for byte
    assert mosquitto_hash("pw", salt).startswith("$7$101$AAECAwQFBgcICQoL$")


def test_each_login_writes_only_its_own_topics(
    site: tuple[ProvisionedMosquitto, dict[str, str]],
) -> None:
    agg = login(site, "aggregator", subscribe="edvit/#")
    viewer = login(site, "homeassistant", subscribe="#")
    cam1 = login(site, "cam-1")
    kitchen = login(site, "pi-kitchen")
    relay = login(site, "relay-1", subscribe=f"edvit/{SITE}/frame/+")
    cam1.send(f"edvit/{SITE}/node/cam-1/feat/g0", b"genuine")
    kitchen.send(f"edvit/{SITE}/node/cam-1/feat/g0", b"forged by another node")
    kitchen.send(f"edvit/{SITE}/node/pi-kitchen/feat/g1", b"not its node id: cam-2")
    kitchen.send(f"edvit/{SITE}/node/cam-2/feat/g1", b"its own")
    kitchen.send("edvit/other-site/node/cam-2/feat/g1", b"cross-site")
    viewer.send(f"edvit/{SITE}/node/cam-1/feat/g0", b"forged by a reader")
    relay.send(f"edvit/{SITE}/node/cam-1/feat/g0", b"forged by a relay node")
    kitchen.send(f"edvit/{SITE}/result", b"forged result")
    cam1.send(f"edvit/{SITE}/frame/cam-1", b"frame")
    kitchen.send(f"edvit/{SITE}/frame/cam-1", b"forged frame")
    got = agg.received()
    assert (f"edvit/{SITE}/node/cam-1/feat/g0", b"genuine") in got
    assert (f"edvit/{SITE}/node/cam-2/feat/g1", b"its own") in got
    assert [
        p for _, p in got if b"forged" in p or p in (b"cross-site", b"not its node id: cam-2")
    ] == []
    assert relay.received() == [(f"edvit/{SITE}/frame/cam-1", b"frame")]
    # status spoofing: another node's retained `offline` never reaches a dashboard
    cam1.send(f"edvit/{SITE}/node/cam-1/status", b"online", retain=True)
    kitchen.send(f"edvit/{SITE}/node/cam-1/status", b"offline", retain=True)
    agg.send(f"edvit/{SITE}/result", b'{"label": "3"}')
    seen = viewer.received()
    assert (f"edvit/{SITE}/node/cam-1/status", b"online") in seen
    assert (f"edvit/{SITE}/result", b'{"label": "3"}') in seen
    assert [t for t, p in seen if p == b"offline" or "/feat/" in t or "/frame/" in t] == []
    late = login(site, "homeassistant", subscribe=f"edvit/{SITE}/node/+/status", client_id="x")
    assert late.received() == [(f"edvit/{SITE}/node/cam-1/status", b"online")]  # retained
    for c in (agg, viewer, cam1, kitchen, relay, late):
        c.close()


def test_no_login_can_take_over_another_session(
    site: tuple[ProvisionedMosquitto, dict[str, str]],
) -> None:
    agg = login(site, "aggregator", client_id=f"edvit-{SITE}-aggregator")
    thief = login(site, "homeassistant", client_id=f"edvit-{SITE}-aggregator")
    node = login(site, "cam-1", client_id=f"edvit-{SITE}-aggregator")
    assert thief.rc == node.rc == "Success"
    time.sleep(1.0)
    assert not agg.dropped.is_set()  # the broker made each client id its login
    again = login(site, "aggregator")  # the same login twice: that is a duplicate identity,
    assert agg.dropped.wait(3)  # which the session markers report (test_mqtt)
    for c in (agg, thief, node, again):
        c.close()


def test_an_oversized_payload_is_refused_unread(
    site: tuple[ProvisionedMosquitto, dict[str, str]],
) -> None:
    agg = login(site, "aggregator", subscribe=f"edvit/{SITE}/node/+/feat/+")
    cam1 = login(site, "cam-1")
    info = cam1.c.publish(f"edvit/{SITE}/node/cam-1/feat/g0", b"\0" * (20 << 20), qos=1)
    assert cam1.dropped.wait(20)  # the broker cuts the sender off
    assert not info.is_published()
    cam1.close()  # or paho would reconnect as cam-1, resend it and knock `after` off
    assert agg.received(wait=1.0) == []
    after = login(site, "cam-1")
    after.send(f"edvit/{SITE}/node/cam-1/feat/g0", b"small")  # the broker still serves
    assert agg.received() == [(f"edvit/{SITE}/node/cam-1/feat/g0", b"small")]
    for c in (agg, after):
        c.close()


def test_site_ca_makes_the_certificate_the_identity(tmp_path: Path) -> None:
    """--ca with broker.auth certificate: mutual TLS, each client certificate's CN is its
    login, so the ACL holds for it as for a password login; no certificate, no entry."""
    path = tmp_path / "site.yaml"
    cfg = site_dict(free_port())
    cfg["broker"]["auth"] = "certificate"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "out"
    proc = provision(path, out, "--ca")
    assert proc.returncode == 0, proc.stderr
    assert not (out / "credentials").exists()  # no passwords: the certificates are the logins
    conf = (out / "mosquitto/edvit.conf").read_text()
    assert "use_identity_as_username true" in conf
    assert "password_file" not in conf
    (out / "mosquitto/tls").symlink_to(out / "tls")  # where --conf-dir says the broker has it
    broker = ProvisionedMosquitto(out, cfg["broker"]["port"]).start()
    tls = out / "tls"

    def connect(user: str | None, subscribe: str | None = None) -> Client:
        client = paho.Client(CallbackAPIVersion.VERSION2)
        cert = (
            (str(tls / f"clients/{user}.crt"), str(tls / f"clients/{user}.key"))
            if user
            else (None, None)
        )
        client.tls_set(ca_certs=str(tls / "ca.crt"), certfile=cert[0], keyfile=cert[1])
        return Client(broker, None, None, subscribe=subscribe, paho_client=client)

    try:
        agg = connect("aggregator", subscribe=f"edvit/{SITE}/node/+/feat/+")
        kitchen = connect("pi-kitchen")
        kitchen.send(f"edvit/{SITE}/node/cam-2/feat/g1", b"its own")
        kitchen.send(f"edvit/{SITE}/node/cam-1/feat/g0", b"forged")
        assert agg.received() == [(f"edvit/{SITE}/node/cam-2/feat/g1", b"its own")]
        with pytest.raises((OSError, queue.Empty)):  # TLS 1.3 may refuse after the handshake
            connect(None)
        # a rerun keeps the CA and every certificate: no host needs new ones
        before = (tls / "clients/cam-1.crt").read_bytes()
        assert credentials(path, out, "--ca").returncode == 0
        assert (tls / "clients/cam-1.crt").read_bytes() == before
        for c in (agg, kitchen):
            c.close()
    finally:
        broker.kill()
