"""Why a TLS connection to the broker fails, in words a person can act on.

paho reports every failed connect the same way ("cannot connect"), whether the broker is
down or its certificate will never verify. A retry loop is right for the first and useless
for the second, so after a failed connect the service repeats the TLS handshake itself, as
paho makes it, and keeps the error ssl raises: certificate verify failed, hostname mismatch,
a client certificate the broker requires, a plain port spoken to in TLS.
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass

from edvit.config.site import BrokerConfig

HANDSHAKE_TIMEOUT_S = 3.0
ALERT_WAIT_S = 0.5  # TLS 1.3 servers refuse a missing client certificate after the handshake


@dataclass(frozen=True)
class TlsProblem:
    """A TLS failure that retrying will not fix; `message` names the config key to change."""

    kind: str  # verify | hostname | client-cert | handshake
    message: str


# What to change for each kind of failure: the key a person edits.
_HINTS = {
    "verify": "broker.tls.ca_file must be the CA that signed the broker's certificate",
    "hostname": "set broker.host to a name the broker's certificate lists",
    "client-cert": "the broker requires a client certificate it accepts: set "
    "broker.tls.cert_file and key_file",
    "handshake": "is broker.port a TLS listener (8883), or does broker.tls belong to another port?",
}


def _problem(kind: str, where: str, what: str) -> TlsProblem:
    return TlsProblem(kind, f"TLS to {where}: {what}; {_HINTS[kind]}")


def tls_context(broker: BrokerConfig) -> ssl.SSLContext:
    """The context paho's `tls_set(ca, cert, key, CERT_REQUIRED)` makes: verify the chain and
    the host name; present the client certificate when one is configured."""
    tls = broker.tls
    if tls is None:
        raise ValueError("the broker has no tls section")
    context = ssl.create_default_context(cafile=tls.ca_file)
    if tls.cert_file is not None:
        context.load_cert_chain(tls.cert_file, tls.key_file)
    return context


def tls_problem(broker: BrokerConfig, timeout: float = HANDSHAKE_TIMEOUT_S) -> TlsProblem | None:
    """Handshake with the broker; the problem if TLS itself fails, None if the handshake
    works or the broker cannot be reached at all (then retrying is the right thing)."""
    if broker.tls is None:
        return None
    where = f"{broker.host}:{broker.port}"
    try:
        context = tls_context(broker)
    except (OSError, ssl.SSLError) as exc:
        return TlsProblem("handshake", f"broker.tls: cannot load the certificates: {exc}")
    try:
        sock = socket.create_connection((broker.host, broker.port), timeout=timeout)
    except OSError:
        return None
    try:
        with context.wrap_socket(sock, server_hostname=broker.host) as tls_sock:
            tls_sock.settimeout(ALERT_WAIT_S)
            try:
                tls_sock.recv(1)  # an MQTT broker says nothing first: only an alert arrives
            except TimeoutError:
                return None
    except ssl.SSLCertVerificationError as exc:
        reason = exc.verify_message or str(exc)
        if "hostname" in reason.lower() or "ip address mismatch" in reason.lower():
            return _problem("hostname", where, f"not valid for {broker.host!r} ({reason})")
        return _problem("verify", where, f"certificate verify failed ({reason})")
    except ssl.SSLError as exc:
        text = exc.reason or str(exc)
        needs_cert = any(k in text.upper() for k in ("CERTIFICATE_REQUIRED", "HANDSHAKE_FAILURE"))
        return _problem("client-cert" if needs_cert else "handshake", where, f"refused ({text})")
    except ConnectionResetError:
        return _problem("handshake", where, "the broker closed the connection mid-handshake")
    except OSError:
        return None  # a time-out or the network: retrying is right
    finally:
        sock.close()
    return None
