"""A small MQTT 3.1.1 broker in Python, for `edvit demo` on a machine without mosquitto.

Enough of the protocol for this system and its users on one machine: CONNECT (clean
sessions, last will), SUBSCRIBE/UNSUBSCRIBE with `+` and `#`, PUBLISH at QoS 0 and 1 (QoS 2
is downgraded to 1), retained messages, PINGREQ, keep-alive timeouts. Loopback only; no
persistence, no authentication. A real site runs mosquitto.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import threading
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

CONNECT, CONNACK, PUBLISH, PUBACK = 1, 2, 3, 4
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK = 8, 9, 10, 11
PINGREQ, PINGRESP, DISCONNECT = 12, 13, 14
MAX_PACKET = 16 << 20


class ProtocolError(Exception):
    """A packet this broker cannot accept; the connection is closed."""


def topic_matches(pattern: str, topic: str) -> bool:
    """MQTT filter matching: `+` one level, `#` the rest; `$` topics never match wildcards."""
    if topic.startswith("$") and pattern[:1] in ("+", "#"):
        return False
    p, t = pattern.split("/"), topic.split("/")
    for i, level in enumerate(p):
        if level == "#":
            return True
        if i >= len(t) or (level != "+" and level != t[i]):
            return False
    return len(p) == len(t)


def _string(data: bytes, pos: int) -> tuple[str, int]:
    if pos + 2 > len(data):
        raise ProtocolError("truncated string")
    (n,) = struct.unpack_from("!H", data, pos)
    if pos + 2 + n > len(data):
        raise ProtocolError("truncated string")
    return data[pos + 2 : pos + 2 + n].decode("utf-8"), pos + 2 + n


def _binary(data: bytes, pos: int) -> tuple[bytes, int]:
    (n,) = struct.unpack_from("!H", data, pos)
    return data[pos + 2 : pos + 2 + n], pos + 2 + n


def _encode_string(text: str) -> bytes:
    raw = text.encode("utf-8")
    return struct.pack("!H", len(raw)) + raw


def _packet(kind: int, flags: int, body: bytes) -> bytes:
    header = bytearray([kind << 4 | flags])
    n = len(body)
    while True:
        byte, n = n % 128, n // 128
        header.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(header) + body


@dataclass
class Session:
    client_id: str
    writer: asyncio.StreamWriter
    subscriptions: dict[str, int] = field(default_factory=dict)
    will: tuple[str, bytes, int, bool] | None = None
    next_id: int = 0

    def packet_id(self) -> int:
        self.next_id = self.next_id % 65535 + 1
        return self.next_id

    def send(self, data: bytes) -> None:
        if not self.writer.is_closing():
            self.writer.write(data)


class MiniBroker:
    """The broker; `start()` runs it on a background thread, `stop()` ends it."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self.sessions: dict[str, Session] = {}
        self.retained: dict[str, tuple[bytes, int]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    # --- life cycle ---------------------------------------------------------------------------

    def start(self, timeout: float = 5.0) -> MiniBroker:
        self._thread = threading.Thread(target=self._run, name="minibroker", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError(f"the embedded broker did not start on {self.address}")
        return self

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._server = loop.run_until_complete(
            asyncio.start_server(self._serve, self.host, self.port)
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        with contextlib.suppress(asyncio.CancelledError):
            loop.run_until_complete(self._server.serve_forever())
        loop.close()

    def stop(self) -> None:
        loop, server = self._loop, self._server
        if loop is None or server is None:
            return

        def close() -> None:
            server.close()
            for session in list(self.sessions.values()):
                session.writer.close()
            for task in asyncio.all_tasks(loop):
                task.cancel()

        loop.call_soon_threadsafe(close)
        if self._thread is not None:
            self._thread.join(5)

    # --- one connection -----------------------------------------------------------------------

    async def _read_packet(self, reader: asyncio.StreamReader) -> tuple[int, int, bytes]:
        first = (await reader.readexactly(1))[0]
        length, shift = 0, 0
        for _ in range(4):
            byte = (await reader.readexactly(1))[0]
            length |= (byte & 0x7F) << shift
            if not byte & 0x80:
                break
            shift += 7
        else:
            raise ProtocolError("malformed remaining length")
        if length > MAX_PACKET:
            raise ProtocolError(f"packet of {length} bytes is too large")
        return first >> 4, first & 0x0F, await reader.readexactly(length)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session: Session | None = None
        clean = False
        try:
            kind, _, body = await asyncio.wait_for(self._read_packet(reader), 10)
            if kind != CONNECT:
                raise ProtocolError("the first packet must be CONNECT")
            session, keepalive = self._connect(body, writer)
            timeout = keepalive * 1.5 if keepalive else None
            while True:
                kind, flags, body = await asyncio.wait_for(self._read_packet(reader), timeout)
                if kind == DISCONNECT:
                    clean = True
                    break
                self._handle(session, kind, flags, body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError, ProtocolError) as exc:
            log.debug("minibroker: connection closed: %s", exc)
        finally:
            if session is not None and self.sessions.get(session.client_id) is session:
                del self.sessions[session.client_id]
                if not clean and session.will is not None:
                    self._publish(*session.will)
            writer.close()

    def _connect(self, body: bytes, writer: asyncio.StreamWriter) -> tuple[Session, int]:
        name, pos = _string(body, 0)
        if name != "MQTT" or body[pos] != 4:
            writer.write(_packet(CONNACK, 0, b"\x00\x01"))  # unacceptable protocol version
            raise ProtocolError(f"protocol {name!r} level {body[pos]} is not MQTT 3.1.1")
        flags = body[pos + 1]
        (keepalive,) = struct.unpack_from("!H", body, pos + 2)
        client_id, pos = _string(body, pos + 4)
        client_id = client_id or f"anon-{id(writer)}"
        will = None
        if flags & 0x04:
            topic, pos = _string(body, pos)
            message, pos = _binary(body, pos)
            will = (topic, message, min(1, (flags >> 3) & 3), bool(flags & 0x20))
        old = self.sessions.pop(client_id, None)
        if old is not None:  # a client id connects once: the older connection goes
            old.writer.close()
        session = Session(client_id, writer, will=will)
        self.sessions[client_id] = session
        session.send(_packet(CONNACK, 0, b"\x00\x00"))
        return session, keepalive

    def _handle(self, session: Session, kind: int, flags: int, body: bytes) -> None:
        if kind == PUBLISH:
            qos, retain = min(1, (flags >> 1) & 3), bool(flags & 1)
            topic, pos = _string(body, 0)
            if qos:
                (pid,) = struct.unpack_from("!H", body, pos)
                pos += 2
                session.send(_packet(PUBACK, 0, struct.pack("!H", pid)))
            self._publish(topic, body[pos:], qos, retain)
        elif kind == SUBSCRIBE:
            (pid,) = struct.unpack_from("!H", body, 0)
            pos, granted, new = 2, bytearray(), []
            while pos < len(body):
                pattern, pos = _string(body, pos)
                qos = min(1, body[pos])
                pos += 1
                session.subscriptions[pattern] = qos
                granted.append(qos)
                new.append(pattern)
            session.send(_packet(SUBACK, 0, struct.pack("!H", pid) + bytes(granted)))
            for topic, (payload, qos) in self.retained.items():
                matched = [session.subscriptions[p] for p in new if topic_matches(p, topic)]
                if matched:
                    self._deliver(session, topic, payload, min(qos, max(matched)), retain=True)
        elif kind == UNSUBSCRIBE:
            (pid,) = struct.unpack_from("!H", body, 0)
            pos = 2
            while pos < len(body):
                pattern, pos = _string(body, pos)
                session.subscriptions.pop(pattern, None)
            session.send(_packet(UNSUBACK, 0, struct.pack("!H", pid)))
        elif kind == PINGREQ:
            session.send(_packet(PINGRESP, 0, b""))
        elif kind != PUBACK:  # acknowledgements of our QoS 1 sends need no action here
            raise ProtocolError(f"packet type {kind} is not supported")

    def _publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        if retain:
            if payload:
                self.retained[topic] = (payload, qos)
            else:
                self.retained.pop(topic, None)
        for session in list(self.sessions.values()):
            matched = [q for p, q in session.subscriptions.items() if topic_matches(p, topic)]
            if matched:
                self._deliver(session, topic, payload, min(qos, max(matched)), retain=False)

    def _deliver(
        self, session: Session, topic: str, payload: bytes, qos: int, retain: bool
    ) -> None:
        header = _encode_string(topic)
        if qos:
            header += struct.pack("!H", session.packet_id())
        session.send(_packet(PUBLISH, qos << 1 | int(retain), header + payload))
