"""The site config: one YAML file every edge node and the aggregator of a site read.

It names the site (the topic prefix), the broker, the tick clock, the aggregator's limits and
each node's capture source. The broker password is never in it: a YAML file gets copied,
committed and pasted into issues, so the password comes from an environment variable or a
systemd credential (`LoadCredential=`), see `broker_password`.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import AfterValidator, Field, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from edvit import media
from edvit.config.base import StrictModel
from edvit.config.loader import ConfigError, load_config
from edvit.ids import Id
from edvit.signing import PUBLIC_PREFIX, parse_public_key, read_trusted_keys

if TYPE_CHECKING:
    from edvit.bundle import Manifest

DEFAULT_PASSWORD_ENV = "EDVIT_MQTT_PASSWORD"
DEFAULT_PASSWORD_CREDENTIAL = "mqtt-password"
_ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
_CREDENTIAL_NAME = r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$"


def _key_path(loc: tuple[str | int, ...]) -> str:
    """`nodes.cam-1.mqtt_user`, `readers[1]`: a key path as the loader's messages print it."""
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")


def _invalid(loc: tuple[str | int, ...], message: str, value: Any) -> ValidationError:
    """A validation error at `loc` (relative to the model validating), so the loader's
    message names the exact key and line instead of the section that checked it."""
    detail = InitErrorDetails(
        type=PydanticCustomError("value_error", message), loc=loc, input=value
    )
    return ValidationError.from_exception_data("SiteConfig", [detail])


class TlsConfig(StrictModel):
    """TLS to the broker; relative file paths are relative to the site config file."""

    ca_file: str | None = Field(
        default=None,
        description="CA certificate (PEM) that signed the broker's certificate; null uses the "
        "system's trusted CAs.",
    )
    cert_file: str | None = Field(
        default=None, description="Client certificate (PEM) for mutual TLS; needs key_file."
    )
    key_file: str | None = Field(
        default=None, description="Private key (PEM) of cert_file; needs cert_file."
    )

    @model_validator(mode="after")
    def _pair(self) -> TlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            missing = "key_file" if self.key_file is None else "cert_file"
            raise _invalid(
                (missing,), "cert_file and key_file go together: give both or neither", None
            )
        return self


class BrokerConfig(StrictModel):
    """The MQTT broker every part of the site connects to."""

    @model_validator(mode="before")
    @classmethod
    def _no_shared_user(cls, data: Any) -> Any:
        if isinstance(data, dict) and "username" in data:
            raise _invalid(
                ("username",),
                "removed: each process logs in as itself (nodes.<id>.mqtt_user, default the "
                "node id; aggregator.mqtt_user, default 'aggregator'); `edvit site "
                "credentials` makes their passwords",
                data["username"],
            )
        return data

    host: str = Field(default="localhost", min_length=1, description="Broker host name or IP.")
    port: int = Field(default=1883, ge=1, le=65535, description="Broker port (8883 for TLS).")
    keepalive: int = Field(
        default=30,
        ge=5,
        le=3600,
        description="Seconds between pings; the broker declares a silent client gone (and "
        "publishes its `offline` will) after 1.5 times this.",
    )
    tls: TlsConfig | None = Field(default=None, description="TLS settings; null: plain TCP.")
    auth: Literal["password", "certificate", "none"] = Field(
        default="password",
        description="How each process proves who it is. password: it logs in as its own "
        "user (nodes.<id>.mqtt_user, aggregator.mqtt_user) with the password from "
        "password_env / password_credential (none found: the user name alone, as an "
        "anonymous broker accepts); certificate: its TLS client certificate is its identity "
        "(mosquitto use_identity_as_username); none: anonymous.",
    )
    password_env: str = Field(
        default=DEFAULT_PASSWORD_ENV,
        pattern=_ENV_NAME,
        description="Environment variable holding the password (the password itself is "
        "never written in this file).",
    )
    password_credential: str = Field(
        default=DEFAULT_PASSWORD_CREDENTIAL,
        pattern=_CREDENTIAL_NAME,
        description="systemd credential name (LoadCredential=NAME:FILE) holding the password, "
        "read from $CREDENTIALS_DIRECTORY/NAME when the environment variable is unset.",
    )


class TickConfig(StrictModel):
    """The site's clock: nodes capture tick k at k·period_s (wall clock, NTP-synced)."""

    period_s: float = Field(default=1.0, gt=0, le=3600, description="Seconds between ticks.")
    deadline_s: float = Field(
        default=0.8,
        gt=0,
        le=3600,
        description="How long after a tick's capture time (k·period_s) the aggregator waits "
        "for missing sub-models before it emits the tick partial (complete: false).",
    )
    max_future_ticks: int = Field(
        default=10,
        ge=0,
        description="Messages for ticks further ahead of the aggregator's clock are refused "
        "(tick_range): a node with a wrong clock must not fill the buffer.",
    )
    max_past_ticks: int = Field(
        default=100,
        ge=0,
        description="Messages for ticks further behind the aggregator's clock are refused "
        "(tick_range).",
    )

    @model_validator(mode="after")
    def _window(self) -> TickConfig:
        if self.max_past_ticks * self.period_s < self.deadline_s:
            need = math.ceil(self.deadline_s / self.period_s)
            raise _invalid(
                ("max_past_ticks",),
                f"{self.max_past_ticks} ticks of {self.period_s:g} s refuse messages before "
                f"deadline_s {self.deadline_s:g} s has passed; it must be at least {need}",
                self.max_past_ticks,
            )
        return self


class HomeAssistantConfig(StrictModel):
    """Home Assistant MQTT discovery: the result appears as a sensor without hand work."""

    enabled: bool = Field(default=False, description="Publish the retained discovery config.")
    discovery_prefix: str = Field(
        default="homeassistant",
        pattern=r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$",
        description="Home Assistant's discovery prefix (its MQTT integration setting).",
    )
    object_id: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9_-]+$",
        max_length=64,
        description="Base of the entities' unique ids (the label sensor's own); null: "
        "<site>_edvit.",
    )
    name: str | None = Field(
        default=None,
        min_length=1,
        description="Device name shown in Home Assistant; null: 'edvit <site>'.",
    )


class EventsConfig(StrictModel):
    """Events (edvit/<site>/event) and counts (edvit/<site>/count/<label>); each value given
    replaces the bundle's (thresholds calibrated by `modelgen build`)."""

    enabled: bool = Field(
        default=True, description="Publish events and counts (false: results only)."
    )
    thresholds: dict[str, Annotated[float, Field(ge=0, le=1)]] = Field(
        default_factory=dict,
        description="Class name → the lowest fused top-1 score that counts towards an event "
        "of it; classes not listed keep the bundle's threshold. Background classes never "
        "fire and cannot be listed.",
    )
    patience: int | None = Field(
        default=None,
        ge=1,
        le=10_000,
        description="Consecutive complete ticks a class must be on top and above its "
        "threshold before its event fires; null: the bundle's.",
    )
    refractory_s: float | None = Field(
        default=None,
        ge=0,
        le=86400,
        description="Seconds after the end of an event's run during which a new run of that "
        "class fires nothing (debounce); null: the bundle's.",
    )


class AggregatorConfig(StrictModel):
    """Limits and outputs of the aggregator."""

    stats_interval_s: float = Field(
        default=10.0, gt=0, le=86400, description="Seconds between stats messages."
    )
    buffer_ticks: int = Field(
        default=64,
        ge=1,
        le=100_000,
        description="Most ticks held while waiting for sub-models; when full the oldest is "
        "emitted partial, so memory stays bounded whatever arrives.",
    )
    max_message_bytes: int = Field(
        default=1 << 20,
        ge=256,
        le=256 << 20,
        description="Feature messages larger than this are dropped unread (oversized).",
    )
    queue_size: int = Field(
        default=10_000,
        ge=1,
        description="Received messages waiting for the worker; beyond it they are dropped "
        "(counted as queue_full) instead of growing memory.",
    )
    no_data_after_s: float = Field(
        default=10.0,
        gt=0,
        le=86400,
        description="Seconds without a valid feature message after which the aggregator's "
        "status reads no_data (and Home Assistant shows the site unavailable).",
    )
    home_assistant: HomeAssistantConfig = Field(
        default_factory=HomeAssistantConfig, description="Home Assistant discovery."
    )
    events: EventsConfig = Field(
        default_factory=EventsConfig, description="Events and counts from the results."
    )
    mqtt_user: Id = Field(
        default="aggregator",
        description="The aggregator's broker login (and client id on a provisioned broker).",
    )


class CameraSourceConfig(StrictModel):
    """A live camera (OpenCV VideoCapture); the newest frame is used, never a backlog."""

    kind: Literal["camera"] = Field(description="Selects a live camera.")
    device: int | str = Field(
        default=0,
        description="Device index (0 = /dev/video0), a device path, or an RTSP/HTTP URL.",
    )
    width: int | None = Field(default=None, ge=1, description="Requested capture width.")
    height: int | None = Field(default=None, ge=1, description="Requested capture height.")
    fps: float | None = Field(default=None, gt=0, description="Requested capture frame rate.")

    @field_validator("device")
    @classmethod
    def _device(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 0:
            raise ValueError("a device index must be 0 or more")
        if isinstance(value, str) and not value.strip():
            raise ValueError("an empty device; give an index, a path or a URL")
        return value


class PicameraSourceConfig(StrictModel):
    """A Raspberry Pi camera module through picamera2 (libcamera); newest frame only.

    Needs picamera2 on the node: apt `python3-picamera2` (`edvit install` makes the venv see
    it) or the `pi-camera` extra."""

    kind: Literal["picamera"] = Field(description="Selects a Raspberry Pi camera module.")
    camera: int = Field(
        default=0, ge=0, description="Camera number as libcamera lists them (`edge-node devices`)."
    )
    width: int | None = Field(
        default=None, ge=1, le=8192, description="Frame width; null: picamera2's default."
    )
    height: int | None = Field(
        default=None, ge=1, le=8192, description="Frame height; null: picamera2's default."
    )
    fps: float | None = Field(
        default=None, gt=0, le=1000, description="Sensor frame rate; null: its default."
    )

    @model_validator(mode="after")
    def _size(self) -> PicameraSourceConfig:
        if (self.width is None) != (self.height is None):
            given = "width" if self.width is not None else "height"
            raise _invalid((given,), "give both width and height, or neither", getattr(self, given))
        return self


class MicrophoneSourceConfig(StrictModel):
    """A live microphone (sounddevice); the sample rate is the bundle's preprocessing rate."""

    kind: Literal["microphone"] = Field(description="Selects a live microphone.")
    device: int | str | None = Field(
        default=None, description="sounddevice device index or name; null: the default input."
    )


class VideoSourceConfig(StrictModel):
    """Replay of a video file: tick k shows frame k mod (frames)."""

    kind: Literal["video"] = Field(description="Selects a video file.")
    path: str = Field(min_length=1, description="The video file; relative to this config.")


class _FolderSourceConfig(StrictModel):
    """Replay of the files of a folder: tick k shows file k mod M, in sorted name order."""

    folder: str = Field(min_length=1, description="The folder; relative to this config.")


def _pattern(default: str, extensions: frozenset[str]) -> Any:
    """The `pattern` option of a folder source; only the files `edvit.media` reads count."""
    return Field(
        default=default,
        min_length=1,
        description=f"Glob in the folder (`**/*` recurses); only {', '.join(sorted(extensions))} "
        "files are used.",
    )


class ImagesSourceConfig(_FolderSourceConfig):
    """Replay of image files, each as the training read it."""

    kind: Literal["images"] = Field(description="Selects a folder of images.")
    pattern: str = _pattern("*", media.IMAGE_EXTENSIONS)


class WavSourceConfig(_FolderSourceConfig):
    """Replay of sound files, each resampled and fixed to the bundle's clip length."""

    kind: Literal["wav"] = Field(description="Selects a folder of sound files.")
    pattern: str = _pattern("**/*", media.SOUND_EXTENSIONS)


class RecordingSourceConfig(StrictModel):
    """A long sound file played as a stream: tick k hears the window (the bundle's clip
    length) that ends k·tick.period_s into the recording, looping at its end; a period
    shorter than the clip gives overlapping windows, so a word falls whole in one."""

    kind: Literal["recording"] = Field(description="Selects a long sound file as a stream.")
    path: str = Field(
        min_length=1, description="The sound file (WAV, FLAC, OGG); relative to this config."
    )


class RelaySourceConfig(StrictModel):
    """The frames another (camera) node publishes: the paper's one camera, many devices."""

    kind: Literal["relay"] = Field(description="Selects another node's published frames.")
    camera: Id = Field(description="Node id whose frames to use; it needs publish_frames: true.")
    wait: float = Field(
        default=0.2,
        gt=0,
        le=60,
        description="Seconds to wait for the tick's frame before the tick is skipped; "
        "shorter than tick.period_s.",
    )


SourceConfig = Annotated[
    CameraSourceConfig
    | PicameraSourceConfig
    | MicrophoneSourceConfig
    | VideoSourceConfig
    | ImagesSourceConfig
    | WavSourceConfig
    | RecordingSourceConfig
    | RelaySourceConfig,
    Field(discriminator="kind"),
]
"""A node's capture source; `edge_node.sources.build_source` turns it into the running one."""


class NodeConfig(StrictModel):
    """One edge node: where its samples come from and how it runs."""

    source: SourceConfig = Field(description="What the node captures; `kind` selects the source.")
    submodels: list[Id] | None = Field(
        default=None,
        min_length=1,
        description="Sub-model ids this node runs on each capture; null: the ones the "
        "bundle's plan assigns to the device with this node's id.",
    )
    publish_frames: bool = Field(
        default=False,
        description="Publish each captured frame as JPEG on edvit/<site>/frame/<node> for "
        "relay nodes (image sources only).",
    )
    jpeg_quality: int = Field(
        default=85, ge=1, le=100, description="JPEG quality of published frames."
    )
    threads: int = Field(
        default=1, ge=1, le=256, description="ONNX Runtime intra-op threads per sub-model."
    )
    stats_interval_s: float = Field(
        default=10.0, gt=0, le=86400, description="Seconds between the node's stats messages."
    )
    mqtt_user: Id | None = Field(
        default=None,
        description="The node's broker login; null: its node id. The broker lets a login "
        "write only its own node's topics.",
    )

    @field_validator("submodels")
    @classmethod
    def _unique(cls, subs: list[str] | None) -> list[str] | None:
        if subs is not None and len(set(subs)) != len(subs):
            raise ValueError(f"sub-model ids appear more than once: {subs}")
        return subs

    @model_validator(mode="after")
    def _frames(self) -> NodeConfig:
        images = ("camera", "picamera", "video", "images")
        if self.publish_frames and self.source.kind not in images:
            raise _invalid(
                ("publish_frames",),
                f"needs an image source ({', '.join(images)}), not {self.source.kind}",
                True,
            )
        return self


def _inline_key(entry: str) -> str:
    """An inline `ed25519:` key must parse here (naming its line); files are read on load."""
    if entry.startswith(PUBLIC_PREFIX):
        parse_public_key(entry)
    return entry


TrustedKey = Annotated[str, Field(min_length=1), AfterValidator(_inline_key)]


class BundleConfig(StrictModel):
    """Which bundles the site runs: with trusted keys, only bundles signed by one of them."""

    trusted_keys: list[TrustedKey] = Field(
        default_factory=list,
        description="Public keys whose signature a bundle must carry (`modelgen keygen` makes "
        "them): inline `ed25519:<base64>`, or a key file (PATH.pub or PEM) relative to this "
        "config. Empty: signatures are not checked (a warning at start).",
    )


class SiteConfig(StrictModel):
    """The site config file (`edvit validate` recognises it by its `site` key)."""

    site: Id = Field(description="Site id: the second topic level, edvit/<site>/….")
    broker: BrokerConfig = Field(default_factory=BrokerConfig, description="The MQTT broker.")
    tick: TickConfig = Field(default_factory=TickConfig, description="The tick clock.")
    aggregator: AggregatorConfig = Field(
        default_factory=AggregatorConfig, description="The aggregator's limits and outputs."
    )
    nodes: dict[Id, NodeConfig] = Field(
        default_factory=dict, description="Edge nodes by node id (the systemd instance name)."
    )
    bundle: BundleConfig = Field(
        default_factory=BundleConfig, description="Which bundles the site accepts."
    )
    readers: list[Id] = Field(
        default_factory=list,
        description="Read-only broker logins (Home Assistant, dashboards) that `edvit site "
        "credentials` provisions: they read results, events, counts, statuses and stats.",
    )

    def login(self, node_id: str | None = None) -> str | None:
        """The broker login of node `node_id` (None: the aggregator); None when anonymous."""
        if self.broker.auth == "none":
            return None
        if node_id is None:
            return self.aggregator.mqtt_user
        return self.nodes[node_id].mqtt_user or node_id

    def logins(self) -> dict[str, tuple[str | int, ...]]:
        """Every login `edvit site credentials` provisions → the config key that names it."""
        keys: list[tuple[tuple[str | int, ...], str]] = [
            (("aggregator", "mqtt_user"), self.aggregator.mqtt_user)
        ]
        keys += [(("nodes", n, "mqtt_user"), node.mqtt_user or n) for n, node in self.nodes.items()]
        keys += [(("readers", i), r) for i, r in enumerate(self.readers)]
        seen: dict[str, tuple[str | int, ...]] = {}
        for key, login in keys:
            if login in seen:
                raise _invalid(
                    key,
                    f"login {login!r} is already {_key_path(seen[login])}'s: every "
                    "process and reader needs its own (one identity, one set of topics)",
                    login,
                )
            seen[login] = key
        return seen

    @model_validator(mode="after")
    def _consistent(self) -> SiteConfig:
        self.logins()
        for node_id, node in self.nodes.items():
            if node.source.kind != "relay":
                continue
            cam = node.source.camera
            loc = ("nodes", node_id, "source", "camera")
            if cam == node_id:
                raise _invalid(loc, "a node cannot relay its own frames", cam)
            if cam not in self.nodes:
                raise _invalid(loc, f"no node {cam!r} in nodes (has {sorted(self.nodes)})", cam)
            if not self.nodes[cam].publish_frames:
                raise _invalid(
                    loc,
                    f"node {cam!r} does not publish frames; set nodes.{cam}.publish_frames: true",
                    cam,
                )
            if node.source.wait >= self.tick.period_s:
                raise _invalid(
                    ("nodes", node_id, "source", "wait"),
                    f"{node.source.wait:g} s is not shorter than tick.period_s "
                    f"{self.tick.period_s:g} s: one missing frame would overrun every later tick",
                    node.source.wait,
                )
        in_flight = math.ceil(self.tick.deadline_s / self.tick.period_s) + 1
        if self.aggregator.buffer_ticks < in_flight:
            raise _invalid(
                ("aggregator", "buffer_ticks"),
                f"{self.aggregator.buffer_ticks} is fewer than the {in_flight} ticks in flight "
                f"within tick.deadline_s; ticks would be emitted before their deadline",
                self.aggregator.buffer_ticks,
            )
        return self


# --- loading ----------------------------------------------------------------------------------


def _absolute(path: str | None, base: Path) -> str | None:
    if path is None or Path(path).is_absolute():
        return path
    return str((base / path).resolve())


def load_site_config(path: str | Path) -> SiteConfig:
    """Read and validate a site config; relative file paths become relative to its folder.

    So `folder: ../data/test` means the same wherever the process was started from (systemd
    starts services in `/`).
    """
    path = Path(path)
    cfg = load_config(path, SiteConfig)
    base = path.resolve().parent
    data: dict[str, Any] = cfg.model_dump()
    tls = data["broker"]["tls"]
    if tls is not None:
        for key in ("ca_file", "cert_file", "key_file"):
            tls[key] = _absolute(tls[key], base)
    for node in data["nodes"].values():
        source = node["source"]
        for key in ("path", "folder"):
            if key in source:
                source[key] = _absolute(source[key], base)
    keys = data["bundle"]["trusted_keys"]
    keys[:] = [k if k.startswith(PUBLIC_PREFIX) else _absolute(k, base) for k in keys]
    read_trusted_keys(keys, str(path))  # a key file that is no key stops start-up here
    return SiteConfig.model_validate(data)


_HOST_PORT = re.compile(
    r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[^:\s\[\]]+))(?::(?P<port>\d+))?$"
)


def parse_broker(text: str) -> tuple[str, int | None]:
    """`HOST:PORT`, `HOST` or `[IPv6]:PORT` → (host, port or None); ValueError otherwise.

    Usable as an argparse `type=` (its ValueError becomes a clean usage error).
    """
    m = _HOST_PORT.match(text.strip())
    if m is None:
        raise ValueError(f"{text!r}: expected HOST:PORT, HOST or [IPv6]:PORT")
    host = m.group("v6") or m.group("host")
    port = int(m.group("port")) if m.group("port") else None
    if port is not None and not 1 <= port <= 65535:
        raise ValueError(f"{text!r}: port {port} is not in 1…65535")
    return host, port


def with_broker(cfg: SiteConfig, override: str | None) -> SiteConfig:
    """`cfg` with its broker host (and port) replaced by a `--broker HOST:PORT` value."""
    if override is None:
        return cfg
    host, port = parse_broker(override)
    update: dict[str, Any] = {"host": host}
    if port is not None:
        update["port"] = port
    return cfg.model_copy(update={"broker": cfg.broker.model_copy(update=update)})


# --- secrets ----------------------------------------------------------------------------------


def broker_password(
    cfg: SiteConfig | BrokerConfig, environ: Mapping[str, str] | None = None
) -> str | None:
    """The broker password: `$<password_env>`, else the systemd credential file, else None.

    A trailing newline (as `echo` writes) is stripped from a credential file; an empty one
    means no password (the units' `SetCredential=` default when the password file is
    absent). Raises ConfigError, naming the variable or file, when a source exists but is
    unusable, or when a password is found while broker.auth is not `password`.
    """
    broker = cfg.broker if isinstance(cfg, SiteConfig) else cfg
    env = os.environ if environ is None else environ
    password: str | None = None
    origin = ""
    value = env.get(broker.password_env)
    if value is not None:
        if not value:
            raise ConfigError(
                f"${broker.password_env}", ["is set but empty; unset it or give the password"]
            )
        password, origin = value, f"${broker.password_env}"
    elif env.get("CREDENTIALS_DIRECTORY"):
        cred = Path(env["CREDENTIALS_DIRECTORY"]) / broker.password_credential
        if cred.exists():
            try:
                text = cred.read_text(encoding="utf-8")
            except OSError as exc:
                raise ConfigError(str(cred), [f"cannot read: {exc.strerror}"]) from None
            except UnicodeDecodeError:
                raise ConfigError(str(cred), ["not UTF-8 text"]) from None
            password = text.rstrip("\r\n") or None
            origin = str(cred)
    if password is not None and broker.auth != "password":
        raise ConfigError(
            origin, [f"a broker password is given but broker.auth is {broker.auth!r}"]
        )
    return password


# --- bundle ↔ site ----------------------------------------------------------------------------


def node_submodels(cfg: SiteConfig, node_id: str, manifest: Manifest) -> list[str]:
    """The sub-models node `node_id` runs: its `submodels`, else the bundle plan's assignment.

    Raises ConfigError naming the key to set when neither gives an answer.
    """
    if node_id not in cfg.nodes:
        raise ConfigError("site config", [f"nodes: no node {node_id!r} (has {sorted(cfg.nodes)})"])
    ids = [s.id for s in manifest.submodels]
    chosen = cfg.nodes[node_id].submodels
    if chosen is not None:
        unknown = [s for s in chosen if s not in ids]
        if unknown:
            raise ConfigError(
                "site config",
                [f"nodes.{node_id}.submodels: {unknown} are not in the bundle (has {ids})"],
            )
        return list(chosen)
    assignment = manifest.plan.assignment or {}
    planned = [s for s in ids if assignment.get(s) == node_id]
    if not planned:
        raise ConfigError(
            "site config",
            [
                f"nodes.{node_id}.submodels: not set, and the bundle's plan assigns no "
                f"sub-model to a device {node_id!r}; list the sub-models to run (of {ids})"
            ],
        )
    return planned


def site_problems(cfg: SiteConfig, manifest: Manifest) -> list[str]:
    """Every `key.path: message` that makes `cfg` unusable with the bundle of `manifest`."""
    problems: list[str] = []
    for node_id in cfg.nodes:
        try:
            node_submodels(cfg, node_id, manifest)
        except ConfigError as exc:
            problems.extend(exc.problems)
    firing = manifest.event_classes
    for label in cfg.aggregator.events.thresholds:
        if label not in firing:
            why = "a background class of the bundle: it never fires"
            if label not in manifest.classes:
                why = "not a class of the bundle"
            problems.append(
                f"aggregator.events.thresholds.{label}: {why} (classes that fire: {firing})"
            )
    return problems


@dataclass
class SiteCheck:
    """What `edvit validate SITE BUNDLE` found: problems make the site fail, warnings not."""

    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def submodel_runs(cfg: SiteConfig, manifest: Manifest) -> dict[str, list[str]]:
    """Each sub-model of the bundle → the nodes that run it (a node whose own entry is
    broken, as site_problems reports, still counts for the known sub-models it lists)."""
    runs: dict[str, list[str]] = {s.id: [] for s in manifest.submodels}
    for node_id, node in cfg.nodes.items():
        try:
            subs = node_submodels(cfg, node_id, manifest)
        except ConfigError:
            subs = [s for s in node.submodels or [] if s in runs]
        for sub in subs:
            runs[sub].append(node_id)
    return runs


def _run_problems(runs: Mapping[str, list[str]]) -> list[str]:
    """Every sub-model must run on exactly one node: a second copy or a missing one leaves
    no tick complete (and the aggregator could not tell whose features to trust)."""
    problems = []
    for sub, nodes in runs.items():
        if len(nodes) > 1:
            problems.append(
                f"nodes: sub-model {sub} runs on {len(nodes)} nodes ({', '.join(nodes)}); "
                "each sub-model must run on exactly one node"
            )
        elif not nodes:
            problems.append(
                f"nodes: sub-model {sub} runs on no node; list it in one node's submodels "
                "(without it no tick is complete)"
            )
    return problems


def feature_senders(cfg: SiteConfig, manifest: Manifest) -> dict[str, str]:
    """Each sub-model → the one node whose features of it the aggregator accepts.

    Raises ConfigError naming every problem when the site does not give exactly one node
    per sub-model."""
    runs = submodel_runs(cfg, manifest)
    problems = site_problems(cfg, manifest) + _run_problems(runs)
    if problems:
        raise ConfigError("site config", problems)
    return {sub: nodes[0] for sub, nodes in runs.items()}


def check_site(cfg: SiteConfig, manifest: Manifest, local: Collection[str] = ()) -> SiteCheck:
    """The whole site against its bundle: `site_problems`, every sub-model on exactly one
    node, the sources of the nodes in `local` on this host, and each node's measured
    inference time against the tick."""
    check = SiteCheck(problems=site_problems(cfg, manifest))
    for node_id in local:
        if node_id in cfg.nodes:
            check.problems.extend(_source_problems(node_id, cfg.nodes[node_id].source))
    runs = submodel_runs(cfg, manifest)
    check.problems.extend(_run_problems(runs))
    for node_id in cfg.nodes:
        subs = [sub for sub, nodes in runs.items() if node_id in nodes]
        slow = _latency_warning(cfg, node_id, subs, manifest.metrics)
        if slow:
            check.warnings.append(slow)
    return check


def _source_problems(node_id: str, source: SourceConfig) -> list[str]:
    """A replay file or folder, or a local camera device, that is not there (URLs,
    microphones and Pi camera modules are not probed here: `edge-node probe` opens them)."""
    key = f"nodes.{node_id}.source"
    if (source.kind == "images" or source.kind == "wav") and not Path(source.folder).is_dir():
        return [f"{key}.folder: {source.folder}: no such folder"]
    if (source.kind == "video" or source.kind == "recording") and not Path(source.path).is_file():
        return [f"{key}.path: {source.path}: no such file"]
    if source.kind == "camera":
        device = source.device
        path = f"/dev/video{device}" if isinstance(device, int) else device
        if path.startswith("/dev/") and not Path(path).exists():
            return [f"{key}.device: {path}: no such device on this host"]
    return []


def _latency_warning(
    cfg: SiteConfig, node_id: str, subs: list[str], metrics: Mapping[str, Any]
) -> str | None:
    """A node whose sub-models took longer than a tick on the build machine (the bundle's
    measured latency; a Pi is slower still)."""
    measured = {
        m.get("id"): m.get("latency_ms")
        for m in metrics.get("per_submodel", [])
        if isinstance(m, dict)
    }
    latencies = [ms for s in subs if isinstance(ms := measured.get(s), int | float)]
    total = sum(latencies)
    if len(latencies) < len(subs) or total <= cfg.tick.period_s * 1000:
        return None
    return (
        f"nodes.{node_id}: its sub-models {', '.join(subs)} took {total:.0f} ms a sample "
        f"on the build machine, more than tick.period_s {cfg.tick.period_s:g} s; ticks "
        "will be skipped (a Pi is slower still)"
    )
