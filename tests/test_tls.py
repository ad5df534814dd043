"""TLS failures named as such, against a real mosquitto with TLS listeners (edvit.tlscheck)."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edvit.config.site import BrokerConfig, TlsConfig
from edvit.mqtt import MqttClient
from edvit.service import EXIT_OK, EXIT_TLS, serve, wait_for_broker
from edvit.tlscheck import tls_problem

from broker import Mosquitto, mosquitto_binary

pytestmark = pytest.mark.skipif(
    mosquitto_binary() is None or shutil.which("openssl") is None,
    reason="needs mosquitto and openssl",
)


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _key_and_csr(cwd: Path, name: str, cn: str) -> None:
    _openssl(
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        f"{name}.key",
        "-out",
        f"{name}.csr",
        "-subj",
        f"/CN={cn}",
        cwd=cwd,
    )


def _sign(cwd: Path, name: str, ca: str, san: str) -> None:
    (cwd / f"{name}.ext").write_text(f"subjectAltName={san}\n")
    _openssl(
        "x509",
        "-req",
        "-in",
        f"{name}.csr",
        "-CA",
        f"{ca}.crt",
        "-CAkey",
        f"{ca}.key",
        "-CAcreateserial",
        "-out",
        f"{name}.crt",
        "-days",
        "2",
        "-extfile",
        f"{name}.ext",
        cwd=cwd,
    )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A site CA, a stranger CA, server certificates with and without the loopback IP, and a
    client certificate signed by the site CA."""
    d = tmp_path_factory.mktemp("pki")
    for ca in ("ca", "other"):
        _openssl(
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            f"{ca}.key",
            "-out",
            f"{ca}.crt",
            "-days",
            "2",
            "-subj",
            f"/CN={ca}-ca",
            cwd=d,
        )
    _key_and_csr(d, "server", "localhost")
    _sign(d, "server", "ca", "DNS:localhost,IP:127.0.0.1")
    _key_and_csr(d, "named", "localhost")
    _sign(d, "named", "ca", "DNS:localhost")  # valid for "localhost" only, not 127.0.0.1
    _key_and_csr(d, "client", "cam-1")
    _sign(d, "client", "ca", "DNS:cam-1")
    return d


def _tls_broker(workdir: Path, pki: Path, cert: str, require_client: bool) -> Mosquitto:
    conf = f"cafile {pki / 'ca.crt'}\ncertfile {pki / cert}.crt\nkeyfile {pki / cert}.key\n"
    if require_client:
        conf += "require_certificate true\n"
    return Mosquitto(workdir, extra_conf=conf).start()


@pytest.fixture
def brokers(tmp_path: Path, pki: Path) -> Iterator[dict[str, Mosquitto]]:
    made = {
        "tls": _tls_broker(tmp_path / "tls", pki, "server", require_client=False),
        "named": _tls_broker(tmp_path / "named", pki, "named", require_client=False),
        "mutual": _tls_broker(tmp_path / "mutual", pki, "server", require_client=True),
        "plain": Mosquitto(tmp_path / "plain").start(),
    }
    try:
        yield made
    finally:
        for broker in made.values():
            broker.kill()


def _config(broker: Mosquitto, ca: Path, client: Path | None = None) -> BrokerConfig:
    tls = TlsConfig(
        ca_file=str(ca),
        cert_file=None if client is None else f"{client}.crt",
        key_file=None if client is None else f"{client}.key",
    )
    return BrokerConfig(host=broker.host, port=broker.port, tls=tls)


def test_right_ca_has_no_problem(brokers: dict[str, Mosquitto], pki: Path) -> None:
    assert tls_problem(_config(brokers["tls"], pki / "ca.crt")) is None
    assert tls_problem(_config(brokers["mutual"], pki / "ca.crt", pki / "client")) is None


def test_wrong_ca_is_a_verify_failure(brokers: dict[str, Mosquitto], pki: Path) -> None:
    problem = tls_problem(_config(brokers["tls"], pki / "other.crt"))
    assert problem is not None
    assert problem.kind == "verify"
    assert "certificate verify failed" in problem.message
    assert "broker.tls.ca_file" in problem.message


def test_wrong_host_name_is_a_hostname_mismatch(brokers: dict[str, Mosquitto], pki: Path) -> None:
    problem = tls_problem(_config(brokers["named"], pki / "ca.crt"))  # dialled as 127.0.0.1
    assert problem is not None
    assert problem.kind == "hostname"
    assert "'127.0.0.1'" in problem.message
    assert "broker.host" in problem.message


def test_missing_client_certificate_is_named(brokers: dict[str, Mosquitto], pki: Path) -> None:
    problem = tls_problem(_config(brokers["mutual"], pki / "ca.crt"))
    assert problem is not None
    assert problem.kind == "client-cert"
    assert "cert_file" in problem.message


def test_tls_to_a_plain_port_is_named(brokers: dict[str, Mosquitto], pki: Path) -> None:
    problem = tls_problem(_config(brokers["plain"], pki / "ca.crt"))
    assert problem is not None
    assert problem.kind == "handshake"
    assert "TLS listener" in problem.message


def test_a_broker_that_is_down_is_no_tls_problem(pki: Path, tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path / "never-started")  # a free port nobody listens on
    assert tls_problem(_config(broker, pki / "ca.crt")) is None
    assert tls_problem(BrokerConfig(host=broker.host, port=broker.port)) is None  # no TLS


class _Client:
    """The smallest service: connect with `broker` (what nodes and the aggregator do first)."""

    def __init__(self, broker: BrokerConfig) -> None:
        self.client = MqttClient(broker, client_id="edvit-t-tls", status_topic="edvit/t/x/status")
        self.error: Exception | None = None

    def start(self, connect_timeout: float | None = None) -> None:
        wait_for_broker(self.client, connect_timeout, threading.Event())

    def stop(self) -> None:
        self.client.stop()


def _serve(broker: BrokerConfig) -> int:
    stop = threading.Event()
    stop.set()  # a service that starts returns at once
    return serve(_Client(broker), "t", stop, 30.0, ())


def test_tls_failures_end_the_service_with_exit_5(
    brokers: dict[str, Mosquitto], pki: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """After a few failed connects the handshake is examined: a failure retrying cannot fix
    ends the service with EXIT_TLS and its message (systemd does not restart it)."""
    assert _serve(_config(brokers["tls"], pki / "ca.crt")) == EXIT_OK
    start = time.monotonic()
    assert _serve(_config(brokers["tls"], pki / "other.crt")) == EXIT_TLS
    assert time.monotonic() - start < 20
    assert "certificate verify failed" in capsys.readouterr().err
    assert _serve(_config(brokers["mutual"], pki / "ca.crt")) == EXIT_TLS
    assert "cert_file" in capsys.readouterr().err
