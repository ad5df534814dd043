"""edvit.config.site: the site config, its errors, the broker password and overrides."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from edvit.cli import main as edvit_main
from edvit.config import ConfigError
from edvit.config.site import (
    BrokerConfig,
    ImagesSourceConfig,
    RelaySourceConfig,
    SiteConfig,
    broker_password,
    load_site_config,
    node_submodels,
    parse_broker,
    with_broker,
)

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "config" / "site.example.yaml"

GOOD = """\
site: lab
broker: {host: mqtt.lan, port: 1883, username: edvit}
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
            lambda s: s.replace("username: edvit}", "username: edvit, password: hunter2}"),
            "broker.password: unknown key (line 2)",
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
            lambda s: s.replace("username: edvit}", "tls: {cert_file: c.pem}}"),
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
    broker = BrokerConfig(username="edvit")
    assert broker_password(broker, {"EDVIT_MQTT_PASSWORD": "s3cret"}) == "s3cret"
    other = BrokerConfig(username="edvit", password_env="SITE_PW")
    assert broker_password(other, {"SITE_PW": "x", "EDVIT_MQTT_PASSWORD": "y"}) == "x"
    assert broker_password(broker, {}) is None
    site = SiteConfig(site="lab", broker=broker)
    assert broker_password(site, {"EDVIT_MQTT_PASSWORD": "s3cret"}) == "s3cret"


def test_password_from_a_systemd_credential(tmp_path: Path) -> None:
    (tmp_path / "mqtt-password").write_text("from-file\n")
    broker = BrokerConfig(username="edvit")
    env = {"CREDENTIALS_DIRECTORY": str(tmp_path)}
    assert broker_password(broker, env) == "from-file"
    # the environment variable wins
    assert broker_password(broker, {**env, "EDVIT_MQTT_PASSWORD": "env"}) == "env"
    # a credential directory without our credential: no password
    assert broker_password(BrokerConfig(password_credential="other"), env) is None
    # the units' SetCredential= fallback (a lone newline) when the password file is absent:
    # no password, so an anonymous site starts without one (not even broker.username is needed)
    (tmp_path / "mqtt-password").write_text("\n")
    assert broker_password(BrokerConfig(), env) is None


def test_password_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\$EDVIT_MQTT_PASSWORD: is set but empty"):
        broker_password(BrokerConfig(username="u"), {"EDVIT_MQTT_PASSWORD": ""})
    with pytest.raises(ConfigError, match=r"broker\.username is not set"):
        broker_password(BrokerConfig(), {"EDVIT_MQTT_PASSWORD": "pw"})


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
    assert moved.broker.username == "edvit"
    assert with_broker(cfg, "other").broker.port == 1883
    assert with_broker(cfg, None) is cfg


# --- which sub-models a node runs -----------------------------------------------------------


def manifest(assignment: dict[str, str] | None) -> Any:
    subs = [SimpleNamespace(id=i) for i in ("g0", "g1", "g2")]
    return SimpleNamespace(submodels=subs, plan=SimpleNamespace(assignment=assignment))


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
