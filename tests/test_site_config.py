"""edvit.config.site: the site config, its errors, the broker password and overrides."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import ValidationError

from edvit.cli import main as edvit_main
from edvit.config import ConfigError
from edvit.config.site import (
    BrokerConfig,
    ImagesSourceConfig,
    RecordingSourceConfig,
    RelaySourceConfig,
    SiteConfig,
    broker_password,
    check_site,
    load_site_config,
    node_submodels,
    parse_broker,
    with_broker,
)

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "config" / "site.example.yaml"

GOOD = """\
site: lab
broker: {host: mqtt.lan, port: 1883, auth: password}
tick: {period_s: 0.5, deadline_s: 0.4}
nodes:
  cam-1:
    source: {kind: camera, device: 0}
    publish_frames: true
  pi-2:
    source: {kind: relay, camera: cam-1}
    submodels: [g1]
  files:
    source: {kind: images, folder: data/test}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "site.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as err:
        load_site_config(write(tmp_path, text))
    return err.value.problems


def test_example_loads_with_paths_made_absolute() -> None:
    cfg = load_site_config(EXAMPLE)
    assert cfg.site == "home"
    assert len(cfg.nodes) >= 3
    for node in cfg.nodes.values():
        assert isinstance(node.source, ImagesSourceConfig)
        assert Path(node.source.folder).is_absolute()
        assert Path(node.source.folder) == (REPO / "data" / "digits-test").resolve()


def test_edvit_validate_knows_site_configs(capsys: pytest.CaptureFixture[str]) -> None:
    assert edvit_main(["validate", str(EXAMPLE)]) == 0
    assert "ok (SiteConfig)" in capsys.readouterr().out


def test_good_config(tmp_path: Path) -> None:
    cfg = load_site_config(write(tmp_path, GOOD))
    assert cfg.broker.password_env == "EDVIT_MQTT_PASSWORD"
    assert cfg.broker.password_credential == "mqtt-password"
    relay = cfg.nodes["pi-2"].source
    assert isinstance(relay, RelaySourceConfig)
    assert relay.camera == "cam-1"
    files = cfg.nodes["files"].source
    assert isinstance(files, ImagesSourceConfig)
    assert files.folder == str((tmp_path / "data" / "test").resolve())
    assert files.pattern == "*"


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (
            lambda s: s.replace("auth: password}", "auth: password, password: hunter2}"),
            "broker.password: unknown key (line 2)",
        ),
        (
            lambda s: s.replace("auth: password}", "username: edvit}"),
            "broker.username: removed: each process logs in as itself",
        ),
        (
            lambda s: s + "readers: [homeassistant, cam-1]\n",
            "readers[1]: login 'cam-1' is already nodes.cam-1.mqtt_user's",
        ),
        (
            lambda s: s.replace(
                "    submodels: [g1]\n", "    submodels: [g1]\n    mqtt_user: aggregator\n"
            ),
            "nodes.pi-2.mqtt_user: login 'aggregator' is already aggregator.mqtt_user's",
        ),
        (
            lambda s: s.replace("    publish_frames: true\n", ""),
            "nodes.pi-2.source.camera: node 'cam-1' does not publish frames; set "
            "nodes.cam-1.publish_frames: true (line 8)",
        ),
        (
            lambda s: s.replace("camera: cam-1}", "camera: cam-1, wait: 0.5}"),
            "nodes.pi-2.source.wait: 0.5 s is not shorter than tick.period_s 0.5 s",
        ),
        (
            lambda s: s.replace("camera: cam-1}", "camera: cam-9}"),
            "nodes.pi-2.source.camera: no node 'cam-9' in nodes",
        ),
        (
            lambda s: s.replace("kind: images", "kind: scanner"),
            "nodes.files.source: Input tag 'scanner' found using 'kind' does not match",
        ),
        (
            lambda s: s.replace("{kind: camera, device: 0}", "{kind: camera, device: -1}"),
            "nodes.cam-1.source.camera.device",
        ),
        (
            lambda s: s.replace("{kind: camera, device: 0}", "{kind: camera, width: 0}"),
            "nodes.cam-1.source.camera.width: Input should be greater than or equal to 1",
        ),
        (
            lambda s: s.replace("{kind: camera, device: 0}", "{kind: picamera, width: 640}"),
            "nodes.cam-1.source.picamera.width: give both width and height, or neither",
        ),
        (
            lambda s: s.replace("{kind: camera, device: 0}", "{kind: picamera, device: 0}"),
            "nodes.cam-1.source.picamera.device: unknown key",
        ),
        (lambda s: s.replace("site: lab", "site: a/b"), "site: String should match pattern"),
        (
            lambda s: s.replace(
                "{kind: images, folder: data/test}", "{kind: video, path: v.mp4, loop: false}"
            ),
            "nodes.files.source.video.loop: unknown key",
        ),
        (
            lambda s: s.replace("[g1]", "[g1, g1]"),
            "nodes.pi-2.submodels: Value error, sub-model ids appear more than once",
        ),
        (
            lambda s: s + "aggregator: {buffer_ticks: 1}\n",
            "aggregator.buffer_ticks: 1 is fewer than the 2 ticks in flight",
        ),
        (
            lambda s: s.replace("deadline_s: 0.4}", "deadline_s: 2.0, max_past_ticks: 2}"),
            "tick.max_past_ticks: 2 ticks of 0.5 s refuse messages before deadline_s 2 s has "
            "passed; it must be at least 4 (line 3)",
        ),
        (
            lambda s: s.replace("auth: password}", "tls: {cert_file: c.pem}}"),
            "broker.tls.key_file: cert_file and key_file go together",
        ),
        (
            lambda s: s.replace(
                "    submodels: [g1]\n", "    submodels: [g1]\n    publish_frames: true\n"
            ),
            "nodes.pi-2.publish_frames: needs an image source",
        ),
    ],
)
def test_errors_name_the_key(tmp_path: Path, edit: Any, expected: str) -> None:
    found = problems(tmp_path, edit(GOOD))
    assert any(p.startswith(expected) for p in found), found


# --- password -------------------------------------------------------------------------------


def test_password_from_the_environment() -> None:
    broker = BrokerConfig()
    assert broker_password(broker, {"EDVIT_MQTT_PASSWORD": "s3cret"}) == "s3cret"
    other = BrokerConfig(password_env="SITE_PW")
    assert broker_password(other, {"SITE_PW": "x", "EDVIT_MQTT_PASSWORD": "y"}) == "x"
    assert broker_password(broker, {}) is None
    site = SiteConfig(site="lab", broker=broker)
    assert broker_password(site, {"EDVIT_MQTT_PASSWORD": "s3cret"}) == "s3cret"


def test_password_from_a_systemd_credential(tmp_path: Path) -> None:
    (tmp_path / "mqtt-password").write_text("from-file\n")
    broker = BrokerConfig()
    env = {"CREDENTIALS_DIRECTORY": str(tmp_path)}
    assert broker_password(broker, env) == "from-file"
    # the environment variable wins
    assert broker_password(broker, {**env, "EDVIT_MQTT_PASSWORD": "env"}) == "env"
    # a credential directory without our credential: no password
    assert broker_password(BrokerConfig(password_credential="other"), env) is None
    # the units' SetCredential= fallback (a lone newline) when the password file is absent:
    # no password, so a site on an anonymous broker starts without one
    (tmp_path / "mqtt-password").write_text("\n")
    assert broker_password(BrokerConfig(), env) is None


def test_password_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\$EDVIT_MQTT_PASSWORD: is set but empty"):
        broker_password(BrokerConfig(), {"EDVIT_MQTT_PASSWORD": ""})
    with pytest.raises(ConfigError, match=r"broker\.auth is 'none'"):
        broker_password(BrokerConfig(auth="none"), {"EDVIT_MQTT_PASSWORD": "pw"})


# --- --broker ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:1884", ("127.0.0.1", 1884)),
        ("mqtt.lan", ("mqtt.lan", None)),
        ("[::1]:8883", ("::1", 8883)),
        (" broker:1 ", ("broker", 1)),
    ],
)
def test_parse_broker(text: str, expected: tuple[str, int | None]) -> None:
    assert parse_broker(text) == expected


@pytest.mark.parametrize("text", ["", "host:", "host:99999", "a:b:c", "host:port", ":1883"])
def test_parse_broker_refuses(text: str) -> None:
    with pytest.raises(ValueError, match=r"HOST:PORT|port"):
        parse_broker(text)


def test_with_broker_overrides_host_and_port(tmp_path: Path) -> None:
    cfg = load_site_config(write(tmp_path, GOOD))
    moved = with_broker(cfg, "10.0.0.2:1999")
    assert (moved.broker.host, moved.broker.port) == ("10.0.0.2", 1999)
    assert moved.broker.auth == "password"
    assert with_broker(cfg, "other").broker.port == 1883
    assert with_broker(cfg, None) is cfg


# --- which sub-models a node runs -----------------------------------------------------------


def manifest(assignment: dict[str, str] | None, metrics: dict[str, Any] | None = None) -> Any:
    subs = [SimpleNamespace(id=i) for i in ("g0", "g1", "g2")]
    return SimpleNamespace(
        submodels=subs,
        plan=SimpleNamespace(assignment=assignment),
        metrics=metrics or {},
        classes=["yes", "no", "_silence_"],
        event_classes=["yes", "no"],
    )


def test_node_submodels(tmp_path: Path) -> None:
    cfg = SiteConfig.model_validate(
        {
            "site": "lab",
            "nodes": {
                "cam-1": {"source": {"kind": "camera"}},
                "pi-2": {"source": {"kind": "images", "folder": "x"}, "submodels": ["g1"]},
            },
        }
    )
    plan = manifest({"g0": "cam-1", "g1": "pi-2", "g2": "cam-1"})
    assert node_submodels(cfg, "cam-1", plan) == ["g0", "g2"]
    assert node_submodels(cfg, "pi-2", plan) == ["g1"]  # the config wins over the plan
    with pytest.raises(ConfigError, match=r"nodes.cam-1.submodels: not set"):
        node_submodels(cfg, "cam-1", manifest(None))
    with pytest.raises(ConfigError, match="no node 'nope'"):
        node_submodels(cfg, "nope", plan)
    bad = cfg.model_copy(
        update={
            "nodes": {
                **cfg.nodes,
                "pi-2": cfg.nodes["pi-2"].model_copy(update={"submodels": ["g7"]}),
            }
        }
    )
    with pytest.raises(ConfigError, match=r"nodes.pi-2.submodels: \['g7'\] are not in the bundle"):
        node_submodels(bad, "pi-2", plan)


# --- the whole site against its bundle (edvit validate SITE BUNDLE) ---------------------------


def site(tmp_path: Path, nodes: dict[str, Any], period: float = 1.0) -> SiteConfig:
    return SiteConfig.model_validate(
        {"site": "lab", "tick": {"period_s": period, "deadline_s": 0.5}, "nodes": nodes}
    )


def test_check_site_every_submodel_on_exactly_one_node(tmp_path: Path) -> None:
    folder = {"kind": "images", "folder": str(tmp_path)}
    good = site(
        tmp_path,
        {
            "a": {"source": folder, "submodels": ["g0", "g1"]},
            "b": {"source": folder, "submodels": ["g2"]},
        },
    )
    assert check_site(good, manifest(None), local=good.nodes).problems == []
    # the site: g1 on two nodes, g2 on none -- validated `ok`, then 0 complete ticks
    bad = site(
        tmp_path,
        {
            "a": {"source": folder, "submodels": ["g0", "g1"]},
            "b": {"source": folder, "submodels": ["g1"]},
        },
    )
    assert check_site(bad, manifest(None)).problems == [
        "nodes: sub-model g1 runs on 2 nodes (a, b); each sub-model must run on exactly one node",
        "nodes: sub-model g2 runs on no node; list it in one node's submodels (without it no "
        "tick is complete)",
    ]
    unknown = site(tmp_path, {"a": {"source": folder, "submodels": ["g0", "g1", "g2", "g9"]}})
    problems = check_site(unknown, manifest(None)).problems
    assert problems == ["nodes.a.submodels: ['g9'] are not in the bundle (has ['g0', 'g1', 'g2'])"]


def test_check_site_probes_the_local_sources(tmp_path: Path) -> None:
    (tmp_path / "clip.mp4").write_bytes(b"")
    all_subs = ["g0", "g1", "g2"]
    cfg = site(
        tmp_path,
        {
            "imgs": {
                "source": {"kind": "images", "folder": str(tmp_path / "gone")},
                "submodels": all_subs,
            },
            "wav": {
                "source": {"kind": "wav", "folder": str(tmp_path / "nope")},
                "submodels": ["g0"],
            },
            "vid": {
                "source": {"kind": "video", "path": str(tmp_path / "clip.mp4")},
                "submodels": ["g1"],
            },
            "v2": {
                "source": {"kind": "video", "path": str(tmp_path / "no.mp4")},
                "submodels": ["g2"],
            },
            "cam": {"source": {"kind": "camera", "device": 97}, "submodels": ["g0"]},
            "url": {"source": {"kind": "camera", "device": "rtsp://x/y"}, "submodels": ["g1"]},
        },
    )
    problems = [
        p for p in check_site(cfg, manifest(None), local=cfg.nodes).problems if "runs on" not in p
    ]
    assert problems == [
        f"nodes.imgs.source.folder: {tmp_path / 'gone'}: no such folder",
        f"nodes.wav.source.folder: {tmp_path / 'nope'}: no such folder",
        f"nodes.v2.source.path: {tmp_path / 'no.mp4'}: no such file",
        "nodes.cam.source.device: /dev/video97: no such device on this host",
    ]
    # another host's sources are not probed (edvit install node X probes X only)
    only = check_site(cfg, manifest(None), local=["vid"]).problems
    assert not [p for p in only if "source" in p]


def test_check_site_warns_when_inference_outlasts_the_tick(tmp_path: Path) -> None:
    folder = {"kind": "images", "folder": str(tmp_path)}
    cfg = site(
        tmp_path,
        {
            "a": {"source": folder, "submodels": ["g0", "g1"]},
            "b": {"source": folder, "submodels": ["g2"]},
        },
        period=0.5,
    )
    metrics = {
        "per_submodel": [
            {"id": "g0", "latency_ms": 300.0},
            {"id": "g1", "latency_ms": 250.0},
            {"id": "g2", "latency_ms": 100.0},
        ]
    }
    check = check_site(cfg, manifest(None, metrics))
    assert check.problems == []
    assert check.warnings == [
        "nodes.a: its sub-models g0, g1 took 550 ms a sample on the build machine, more than "
        "tick.period_s 0.5 s; ticks will be skipped (a Pi is slower still)"
    ]
    assert check_site(cfg, manifest(None)).warnings == []  # nothing measured, nothing said


def test_duplicate_yaml_keys_are_an_error(tmp_path: Path) -> None:
    """The second key silently won: a node then reported another site."""
    path = tmp_path / "site.yaml"
    path.write_text("site: lab\nnodes:\n  cam:\n    source: {kind: camera}\nsite: attic\n")
    with pytest.raises(ConfigError) as info:
        load_site_config(path)
    assert info.value.problems == [
        "site: duplicate key (line 5, first on line 1); YAML would keep the second "
        "silently, remove one"
    ]
    path.write_text("site: lab\nnodes:\n  cam:\n    source: {kind: camera, device: 0, device: 1}\n")
    with pytest.raises(
        ConfigError,
        match=r"site.yaml: nodes.cam.source.device: duplicate key "
        r"\(line 4, first on line 4\)",
    ):
        load_site_config(path)
    path.write_text(
        "base: &b {kind: camera}\nsite: lab\nnodes:\n  cam:\n"
        "    source:\n      <<: *b\n      kind: camera\n"
    )
    with pytest.raises(ConfigError, match="base: unknown key"):  # a merge key is no duplicate
        load_site_config(path)
    assert edvit_main(["validate", str(path)]) == 2


def test_recording_source_path_is_relative_to_the_config(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    path = tmp_path / "sub" / "site.yaml"
    path.write_text(
        "site: lab\nnodes:\n  mic: {source: {kind: recording, path: ../long.wav}, "
        "submodels: [g0, g1, g2]}\n"
    )
    cfg = load_site_config(path)
    source = cfg.nodes["mic"].source
    assert isinstance(source, RecordingSourceConfig)
    assert source.path == str(tmp_path / "long.wav")
    assert check_site(cfg, manifest(None), local=["mic"]).problems == [
        f"nodes.mic.source.path: {tmp_path / 'long.wav'}: no such file"
    ]
    (tmp_path / "long.wav").write_bytes(b"")
    assert check_site(cfg, manifest(None), local=["mic"]).problems == []


def test_event_overrides_name_only_classes_that_fire(tmp_path: Path) -> None:
    folder = {"kind": "images", "folder": str(tmp_path)}
    cfg = SiteConfig.model_validate(
        {
            "site": "lab",
            "nodes": {"a": {"source": folder, "submodels": ["g0", "g1", "g2"]}},
            "aggregator": {"events": {"thresholds": {"yes": 0.9, "_silence_": 0.5, "maybe": 0.5}}},
        }
    )
    assert check_site(cfg, manifest(None)).problems == [
        "aggregator.events.thresholds._silence_: a background class of the bundle: it never "
        "fires (classes that fire: ['yes', 'no'])",
        "aggregator.events.thresholds.maybe: not a class of the bundle (classes that fire: "
        "['yes', 'no'])",
    ]
    with pytest.raises(ValidationError, match="less than or equal to 1"):
        SiteConfig.model_validate(
            {"site": "lab", "aggregator": {"events": {"thresholds": {"x": 2}}}}
        )
