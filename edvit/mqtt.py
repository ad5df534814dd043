"""A small paho-mqtt 2.x client for the services: auth, TLS, availability, reconnects.

The rules every long-running part of the site follows (as paho's own examples do):
- VERSION2 callbacks; the loop runs in paho's thread (`loop_start`).
- A retained `offline` last will on the availability topic, a retained `online` published
  in `on_connect`, a retained `stopped` on a clean exit: a dashboard always knows whether a
  part is up, crashed, or was stopped on purpose.
- Subscriptions are made in `on_connect`, so a broker restart (which forgets them, clean
  session) resubscribes by itself; paho reconnects with a 0.5–5 s back-off.
- `on_message` never blocks: a message goes to a bounded queue (a full queue drops and
  counts it) or to a callback that must return at once. Blocking paho's thread would stall
  keep-alives and every other message.
- paho's own outgoing queue is bounded too, so a long broker outage cannot grow memory.
- One identity, one process: with a session topic, the client keeps a retained random token
  there. A second process logging in as the same user takes the session over (the broker
  ties client ids to users), and each sees the other's token on its next connect; after
  TAKEOVERS of those within TAKEOVER_WINDOW_S both give up with IdentityError instead of
  knocking each other off forever.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import secrets
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from edvit.config.site import BrokerConfig, broker_password
from edvit.jsonfmt import compact_json
from edvit.topics import OFFLINE, ONLINE, STOPPED

log = logging.getLogger(__name__)

RECONNECT_MIN_S = 0.5
RECONNECT_MAX_S = 5
MAX_QUEUED_OUTGOING = 1000
_FATAL_CONNACK = ("Bad user name or password", "Not authorized")
AUTH_REFUSALS = 3  # refused CONNACKs in a row before giving up (a broker reloading its users)
TAKEOVERS = 3
TAKEOVER_WINDOW_S = 60.0


class MqttError(Exception):
    """The broker cannot be used with this configuration (e.g. unreadable TLS files)."""


class AuthError(MqttError):
    """The broker refused our login, again and again: the credentials are wrong."""


class IdentityError(MqttError):
    """Another process uses our login: two processes, one identity."""


class TlsError(MqttError):
    """TLS to the broker fails in a way retrying will not fix (edvit.tlscheck)."""


@dataclass(frozen=True)
class Message:
    """A received message; `received` is time.monotonic() when paho handed it over."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    received: float


MessageCallback = Callable[[Message], None]


def no_delay(client: paho.Client, userdata: Any, sock: Any) -> None:
    """Disable Nagle: a node sends several small messages per tick, and Nagle plus delayed
    ACKs would hold them back for tens of milliseconds (paho leaves it on)."""
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class MqttClient:
    """One service's connection to the broker (see the module docstring for the rules)."""

    def __init__(
        self,
        broker: BrokerConfig,
        *,
        client_id: str,
        status_topic: str,
        login: str | None = None,
        session_topic: str | None = None,
        subscriptions: Sequence[tuple[str, int]] = (),
        inbox: queue.Queue[Message] | None = None,
        on_message: MessageCallback | None = None,
        on_fatal: Callable[[MqttError], None] | None = None,
        password: str | None = None,
        max_queued_outgoing: int = MAX_QUEUED_OUTGOING,
    ) -> None:
        """`inbox` (bounded) or `on_message` (non-blocking) receives the subscribed messages.

        `login` is the user to log in as (broker.auth password) and `password` its
        password; None reads it with `broker_password(broker)` (environment variable or
        systemd credential; ConfigError if that source is unusable). `on_fatal` hears,
        from paho's thread, of an AuthError or IdentityError after start-up (it must not
        block); before, wait_connected raises it.
        """
        if inbox is not None and on_message is not None:
            raise ValueError("give inbox or on_message, not both")
        self.broker = broker
        self.client_id = client_id
        self._login = login or client_id
        self.status_topic = status_topic
        self._subscriptions = list(subscriptions)
        self._inbox = inbox
        self._callback = on_message
        self._on_connect_retained: list[tuple[str, bytes]] = [(status_topic, ONLINE.encode())]
        self._connected = threading.Event()
        self._lock = threading.Lock()
        self._started = False
        self._stopped = False
        self._connects = 0
        self._refusals = 0
        self._fatal: MqttError | None = None
        self._on_fatal = on_fatal
        self.session_topic = session_topic
        self._token = secrets.token_hex(8).encode()
        self._takeovers: list[float] = []
        self.connect_failures = 0  # connects that failed before CONNACK (TCP, TLS)
        self.last_error: str | None = None
        self.dropped = 0  # messages lost because the inbox was full

        client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=True,
            protocol=paho.MQTTv311,
        )
        if broker.auth == "password" and login is not None:
            secret = password if password is not None else broker_password(broker)
            client.username_pw_set(login, secret)
        if broker.tls is not None:
            tls = broker.tls
            try:
                client.tls_set(
                    ca_certs=tls.ca_file,
                    certfile=tls.cert_file,
                    keyfile=tls.key_file,
                    cert_reqs=ssl.CERT_REQUIRED,
                )
            except (OSError, ssl.SSLError, ValueError) as exc:
                raise MqttError(
                    f"broker.tls: cannot use ca_file={tls.ca_file!r} cert_file={tls.cert_file!r} "
                    f"key_file={tls.key_file!r}: {exc}"
                ) from None
        client.will_set(status_topic, OFFLINE, qos=1, retain=True)
        # paho's hint says int, but it computes with floats: 0.5 s is the agreed first retry.
        client.reconnect_delay_set(min_delay=RECONNECT_MIN_S, max_delay=RECONNECT_MAX_S)  # type: ignore[arg-type]
        client.max_queued_messages_set(max_queued_outgoing)
        client.on_socket_open = no_delay
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        self._client = client

    # --- state ------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def reconnects(self) -> int:
        """Successful connections after the first one (broker restarts, network losses)."""
        return max(0, self._connects - 1)

    @property
    def address(self) -> str:
        return f"{self.broker.host}:{self.broker.port}"

    def publish_on_connect(self, topic: str, payload: bytes | str) -> None:
        """A retained message (re)published on every connect, like the `online` status.

        For discovery configs: a broker restarted without persistence has forgotten them.
        """
        data = payload.encode() if isinstance(payload, str) else payload
        self._on_connect_retained.append((topic, data))
        if self.connected:
            self._client.publish(topic, data, qos=1, retain=True)

    def set_status(self, status: str) -> None:
        """Replace the retained status (`online` on connect) by `status`, now and on every
        reconnect: e.g. the aggregator's `no_data` while no features arrive."""
        data = status.encode()
        with self._lock:
            self._on_connect_retained[0] = (self.status_topic, data)
        if self.connected:
            self._client.publish(self.status_topic, data, qos=1, retain=True)

    # --- paho callbacks (paho's thread: never block here) -----------------------------------

    def _on_connect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: Any,
        reason_code: Any,
        properties: Any,
    ) -> None:
        if reason_code.is_failure:
            name = str(reason_code)
            self.last_error = f"refused: {name}"
            log.warning("MQTT %s: connection refused: %s", self.address, name)
            self._refusals = self._refusals + 1 if name in _FATAL_CONNACK else 0
            if self._refusals >= AUTH_REFUSALS:
                self._fail(
                    AuthError(
                        f"the broker at {self.address} refused the login {self._login!r} "
                        f"{self._refusals} times: {name}; check the password (broker."
                        "password_env / password_credential) and the broker's password file"
                    )
                )
            return
        self._connects += 1
        self._refusals = 0
        self.last_error = None
        if self._connects > 1:
            log.info("MQTT %s: reconnected (%d reconnects)", self.address, self.reconnects)
        # Subscribe before announcing `online`: the broker handles our packets in order, so
        # whoever sees `online` can publish to us and be heard.
        subscriptions = list(self._subscriptions)
        if self.session_topic is not None:
            subscriptions.append((self.session_topic, 1))
        if subscriptions:
            client.subscribe(subscriptions)
        for topic, payload in self._on_connect_retained:
            client.publish(topic, payload, qos=1, retain=True)
        if self.session_topic is not None:
            client.publish(self.session_topic, self._token, qos=1, retain=True)
        self._connected.set()

    def _on_connect_fail(self, client: paho.Client, userdata: Any) -> None:
        self.connect_failures += 1
        self.last_error = "cannot connect (broker down or unreachable)"

    def _fail(self, exc: MqttError) -> None:
        """A condition retrying cannot fix: stop reconnecting, tell wait_connected / on_fatal."""
        if self._fatal is not None:
            return
        self._fatal = exc
        log.error("MQTT %s: %s", self.address, exc)
        self._client.disconnect()  # paho's reconnect loop stops after a deliberate disconnect
        if self._on_fatal is not None:
            self._on_fatal(exc)

    def _session_seen(self, payload: bytes) -> None:
        """A token on our session topic: ours, cleared, or another process's (a take-over)."""
        if not payload or payload == self._token:
            return
        now = time.monotonic()
        self._takeovers = [t for t in self._takeovers if now - t < TAKEOVER_WINDOW_S]
        self._takeovers.append(now)
        log.warning(
            "MQTT %s: another process logged in as %r (%d times in %g s)",
            self.address,
            self._login,
            len(self._takeovers),
            TAKEOVER_WINDOW_S,
        )
        if len(self._takeovers) >= TAKEOVERS:
            self._fail(
                IdentityError(
                    f"another process uses the login {self._login!r} on {self.address} "
                    f"(session taken over {len(self._takeovers)} times within "
                    f"{TAKEOVER_WINDOW_S:g} s): give every node its own id and login"
                )
            )

    def _on_disconnect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: Any,
        reason_code: Any,
        properties: Any,
    ) -> None:
        was = self._connected.is_set()
        self._connected.clear()
        if not was:  # dropped before CONNACK: e.g. TLS 1.3 refusing a missing client cert
            self.connect_failures += 1
        if was and not self._stopped:
            self.last_error = f"disconnected: {reason_code}"
            log.warning("MQTT %s: disconnected (%s); reconnecting", self.address, reason_code)

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        if msg.topic == self.session_topic:
            self._session_seen(bytes(msg.payload))
            return
        message = Message(
            topic=msg.topic,
            payload=bytes(msg.payload),
            qos=msg.qos,
            retain=bool(msg.retain),
            received=time.monotonic(),
        )
        if self._inbox is not None:
            try:
                self._inbox.put_nowait(message)
            except queue.Full:
                self.dropped += 1
        elif self._callback is not None:
            try:
                self._callback(message)
            except Exception:  # an exception would end paho's loop thread: log, keep going
                log.exception("MQTT message callback failed on %s", msg.topic)

    # --- life cycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Connect in the background; paho retries until the broker answers."""
        with self._lock:
            if self._started:
                return
            self._started = True
            self._client.connect_async(
                self.broker.host, self.broker.port, keepalive=self.broker.keepalive
            )
            self._client.loop_start()

    def wait_connected(self, timeout: float | None) -> bool:
        """True once connected (within `timeout` s); MqttError if the broker refused us."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._fatal is not None:
                raise self._fatal
            left = 0.2 if deadline is None else min(0.2, deadline - time.monotonic())
            if left <= 0:
                return self.connected
            if self._connected.wait(left):
                return True

    def connect_and_wait(self, timeout: float | None) -> bool:
        """Start and wait until the broker answers: the condition for systemd's READY=1."""
        self.start()
        return self.wait_connected(timeout)

    def publish_bytes(
        self, topic: str, payload: bytes, qos: int = 0, retain: bool = False
    ) -> paho.MQTTMessageInfo:
        """Queue a publish; never blocks. QoS 0 while disconnected is dropped by paho."""
        return self._client.publish(topic, payload, qos=qos, retain=retain)

    def publish_json(
        self, topic: str, data: Any, qos: int = 0, retain: bool = False
    ) -> paho.MQTTMessageInfo:
        """`data` as compact UTF-8 JSON (NaN refused: no JSON parser reads it)."""
        return self.publish_bytes(topic, compact_json(data), qos=qos, retain=retain)

    def stop(self, timeout: float = 3.0) -> None:
        """Publish retained `stopped`, wait (≤ timeout) until it is out, disconnect, end the loop.

        A clean disconnect suppresses the `offline` will: `stopped` tells apart a service
        stopped on purpose from one that crashed.
        """
        with self._lock:
            if self._stopped or not self._started:
                self._stopped = True
                return
            self._stopped = True
        if self.connected:
            if self.session_topic is not None:  # a clean exit is no take-over
                self._client.publish(self.session_topic, b"", qos=1, retain=True)
            info = self._client.publish(self.status_topic, STOPPED, qos=1, retain=True)
            try:
                info.wait_for_publish(timeout)
            except (RuntimeError, ValueError) as exc:
                log.warning("MQTT %s: could not publish 'stopped': %s", self.address, exc)
        self._client.disconnect()
        self._client.loop_stop()
        self._connected.clear()
