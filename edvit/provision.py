"""`edvit site credentials`: one broker identity per process, made from the site config.

    DIR/credentials/node-<id>      a random password per node, the aggregator and each reader
    DIR/credentials/aggregator     (0600): copy each to its host (`edvit install …
    DIR/credentials/reader-<name>  --password-file`), a reader's to Home Assistant
    DIR/mosquitto/passwd           the same passwords hashed as `mosquitto_passwd` does
    DIR/mosquitto/acl              per-login grants (below)
    DIR/mosquitto/edvit.conf       listener, no anonymous login, client id = user name,
                                   packet and queue limits, TLS with `--ca`
    DIR/tls/                       with `--ca`: a site CA, the broker's certificate and one
                                   client certificate per login (its CN is the login)

The ACL is written out per login rather than as `%u` patterns: a node's login may differ
from its node id (`nodes.<id>.mqtt_user`), and each grant names the site, so one broker can
serve several sites without one site's login writing another's topics. A node may write
only under `edvit/<site>/node/<node>/` (and its relay frames), so with mosquitto's
`use_username_as_clientid` nobody can publish as, or take the session of, another process.

Re-running keeps the passwords already in DIR/credentials (adding a node does not make every
host need a new password); delete a file to rotate that login's password.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from edvit import topics
from edvit.config.site import SiteConfig
from edvit.wire import MAX_FRAME_BYTES

CONF_DIR = PurePosixPath("/etc/mosquitto/edvit")  # where the broker host keeps the files
SECRET_MODE = 0o600
HEADER_BYTES = 4096  # fixed header, topic and properties on top of the largest payload
MAX_QUEUED_MESSAGES = 1000  # per client: a stalled subscriber cannot grow the broker
QUEUED_PACKETS = 4  # … nor hold more than a few of the largest messages for it,
MIN_QUEUED_BYTES = 16 << 20  # but room for the queued messages at feature size
MAX_INFLIGHT_MESSAGES = 20
# mosquitto_passwd's format for mosquitto 2: PBKDF2-SHA512, 101 rounds, 12-byte salt.
HASH_ROUNDS = 101
SALT_BYTES = 12


class ProvisionError(Exception):
    """The site cannot be provisioned as configured; the message names the key."""


@dataclass
class Grants:
    """What one login may do: mosquitto ACL access levels → topic filters."""

    config_key: str
    credential: str  # its password file's name: what the units' LoadCredential= reads
    read: list[str] = field(default_factory=list)
    write: list[str] = field(default_factory=list)
    readwrite: list[str] = field(default_factory=list)


def discovery_filter(cfg: SiteConfig) -> str:
    """Every Home Assistant discovery topic of the site's entities (aggregator.discovery)."""
    prefix = cfg.aggregator.home_assistant.discovery_prefix
    return f"{prefix}/+/{topics.ha_node_id(cfg.site)}/+/config"


def grants(cfg: SiteConfig) -> dict[str, Grants]:
    """login → its grants; every topic not granted is refused by the broker."""
    site = cfg.site
    base = f"{topics.PREFIX}/{site}"
    out: dict[str, Grants] = {}
    for node_id, node in cfg.nodes.items():
        mine = Grants(
            f"nodes.{node_id}",
            f"node-{node_id}",
            write=[
                f"{topics.node_prefix(site, node_id)}/feat/+",
                topics.node_status(site, node_id),
                topics.node_stats(site, node_id),
            ],
            readwrite=[topics.node_session(site, node_id)],
        )
        if node.publish_frames:
            mine.write.append(topics.frame(site, node_id))
        if node.source.kind == "relay":
            mine.read.append(topics.frame(site, node.source.camera))
        out[cfg.login(node_id) or node_id] = mine
    out[cfg.aggregator.mqtt_user] = Grants(
        "aggregator",
        "aggregator",
        read=[topics.feat_wildcard(site)],
        write=[
            topics.result(site),
            topics.event(site),
            f"{base}/count/+",
            topics.aggregator_status(site),
            topics.aggregator_stats(site),
            discovery_filter(cfg),
        ],
        readwrite=[topics.aggregator_session(site)],
    )
    readable = [
        topics.result(site),
        topics.event(site),
        f"{base}/count/+",
        f"{base}/node/+/status",
        f"{base}/node/+/stats",
        topics.aggregator_status(site),
        topics.aggregator_stats(site),
        discovery_filter(cfg),
    ]
    for i, reader in enumerate(cfg.readers):
        out[reader] = Grants(f"readers[{i}]", f"reader-{reader}", read=list(readable))
    return out


def acl_text(cfg: SiteConfig) -> str:
    lines = [
        f"# edvit site {cfg.site}: written by `edvit site credentials`; every topic not",
        "# granted here is refused. Regenerate it from the site config, do not edit it.",
    ]
    for login, g in grants(cfg).items():
        lines += ["", f"# {g.config_key}", f"user {login}"]
        for access, filters in (("read", g.read), ("write", g.write), ("readwrite", g.readwrite)):
            lines += [f"topic {access} {f}" for f in filters]
    return "\n".join(lines) + "\n"


def max_packet_bytes(cfg: SiteConfig) -> int:
    """The largest packet a process of the site legally sends: a feature message at the
    aggregator's limit, or a relayed frame when some node publishes frames."""
    frames = any(node.publish_frames for node in cfg.nodes.values())
    largest = max(cfg.aggregator.max_message_bytes, MAX_FRAME_BYTES if frames else 0)
    return largest + HEADER_BYTES


def mosquitto_hash(password: str, salt: bytes | None = None) -> str:
    """A password file entry's hash, as `mosquitto_passwd` (mosquitto 2) writes it."""
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, HASH_ROUNDS, 64)
    b64 = base64.b64encode
    return f"$7${HASH_ROUNDS}${b64(salt).decode()}${b64(digest).decode()}"


def broker_conf(
    cfg: SiteConfig,
    conf_dir: PurePosixPath = CONF_DIR,
    bind: str | None = None,
    tls: bool = False,
) -> str:
    """mosquitto's config for the site (a file for /etc/mosquitto/conf.d/)."""
    listener = f"listener {cfg.broker.port}" + (f" {bind}" if bind else "")
    packet = max_packet_bytes(cfg)
    lines = [
        f"# edvit site {cfg.site}: written by `edvit site credentials`.",
        "# This file: /etc/mosquitto/conf.d/edvit.conf; passwd and acl (owner mosquitto,",
        f"# 0600): {conf_dir}/.",
        listener,
        "allow_anonymous false",
        "# The client id is the login: nobody can take over another process's session.",
        "use_username_as_clientid true",
    ]
    if cfg.broker.auth == "certificate":
        lines += ["require_certificate true", "use_identity_as_username true"]
    else:
        lines.append(f"password_file {conf_dir}/passwd")
    lines += [
        f"acl_file {conf_dir}/acl",
        f"# The largest legal message is {packet - HEADER_BYTES} bytes: a larger packet is",
        "# refused unread and its sender disconnected.",
        f"max_packet_size {packet}",
        f"max_queued_messages {MAX_QUEUED_MESSAGES}",
        f"max_queued_bytes {max(QUEUED_PACKETS * packet, MIN_QUEUED_BYTES)}",
        f"max_inflight_messages {MAX_INFLIGHT_MESSAGES}",
        "# Small messages every tick: don't let Nagle hold them back.",
        "set_tcp_nodelay true",
    ]
    if tls:
        lines += [
            f"cafile {conf_dir}/tls/ca.crt",
            f"certfile {conf_dir}/tls/broker.crt",
            f"keyfile {conf_dir}/tls/broker.key",
            "tls_version tlsv1.2",
        ]
    return "\n".join(lines) + "\n"


def secret_file(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, SECRET_MODE)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    path.chmod(SECRET_MODE)  # an existing file keeps its mode through O_CREAT


def _read_password(path: Path) -> str | None:
    if not path.exists():
        return None
    text = path.read_text(encoding="utf-8").rstrip("\r\n")
    if not text:
        raise ProvisionError(f"{path}: empty; delete it to make a new password")
    return text


Say = Callable[[str], None]


def write_site_credentials(
    cfg: SiteConfig,
    out: Path,
    conf_dir: PurePosixPath = CONF_DIR,
    bind: str | None = None,
    tls: bool = False,
    say: Say = print,
) -> dict[str, str]:
    """Write the credentials, passwd, acl and edvit.conf (with a TLS listener when `tls`:
    `edvit.site_ca` makes its files) under `out`; login → password."""
    if cfg.broker.auth == "none":
        raise ProvisionError("broker.auth: is 'none' (anonymous): there is nothing to provision")
    if cfg.broker.auth == "certificate" and not tls:
        raise ProvisionError(
            "broker.auth: 'certificate' needs client certificates: add --ca to make a site CA"
        )
    passwords: dict[str, str] = {}
    if cfg.broker.auth == "password":
        for login, g in grants(cfg).items():
            path = out / "credentials" / g.credential
            kept = _read_password(path)
            passwords[login] = kept or secrets.token_urlsafe(24)
            if kept is None:
                secret_file(path, passwords[login].encode() + b"\n")
            say(f"{path}: {'kept' if kept else 'new'} password of {login!r}")
        entries = "".join(f"{u}:{mosquitto_hash(p)}\n" for u, p in passwords.items())
        secret_file(out / "mosquitto" / "passwd", entries.encode())
    secret_file(out / "mosquitto" / "acl", acl_text(cfg).encode())
    conf = out / "mosquitto" / "edvit.conf"
    conf.write_text(broker_conf(cfg, conf_dir, bind, tls=tls))
    say(f"{out / 'mosquitto'}: passwd, acl and edvit.conf for the broker host")
    return passwords
