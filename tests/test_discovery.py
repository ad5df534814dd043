"""Home Assistant discovery payloads, field by field against HA's documented MQTT schema."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from aggregator.discovery import discovery_messages, expire_after_s
from edvit.config.site import SiteConfig, load_site_config

# Documented configuration variables (home-assistant.io/integrations/<component>.mqtt),
# the ones a discovery payload may carry; `object_id` is left out on purpose (deprecated
# since 2025.10 for `default_entity_id`, removed in 2026.4).
_ENTITY = {
    "availability", "availability_mode", "availability_template", "availability_topic",
    "default_entity_id", "device", "device_class", "enabled_by_default", "encoding",
    "entity_category", "entity_picture", "expire_after", "force_update", "icon",
    "json_attributes_template", "json_attributes_topic", "name", "origin",
    "payload_available", "payload_not_available", "qos", "state_topic", "unique_id",
    "value_template",
}  # fmt: skip
DOCUMENTED = {
    "sensor": _ENTITY
    | {"last_reset_value_template", "options", "state_class", "suggested_display_precision",
       "unit_of_measurement"},
    "binary_sensor": _ENTITY | {"off_delay", "payload_off", "payload_on"},
    "event": (_ENTITY - {"expire_after", "force_update"}) | {"event_types"},
}  # fmt: skip
REQUIRED = {
    "sensor": {"state_topic"},
    "binary_sensor": {"state_topic"},
    "event": {"state_topic", "event_types"},
}
DEVICE = {
    "configuration_url", "connections", "hw_version", "identifiers", "manufacturer", "model",
    "model_id", "name", "serial_number", "suggested_area", "sw_version", "via_device",
}  # fmt: skip
ORIGIN = {"name", "sw_version", "support_url"}
AVAILABILITY = {"payload_available", "payload_not_available", "topic", "value_template"}
PER_TICK = ("tick", "latency_ms", "score", "ts")  # change every tick: a recorder row each
# what discovery reads of a bundle: the classes that fire events (not _silence_, _unknown_)
MANIFEST: Any = SimpleNamespace(event_classes=["stop", "go"])


def _site(tmp_path: Path, enabled: bool, events: bool = True) -> SiteConfig:
    path = tmp_path / "site.yaml"
    path.write_text(
        "site: home\n"
        "tick: {period_s: 0.5, deadline_s: 0.4}\n"
        f"aggregator: {{home_assistant: {{enabled: {str(enabled).lower()}}}, "
        f"events: {{enabled: {str(events).lower()}}}}}\n"
        "nodes:\n"
        "  cam-1: {source: {kind: camera, device: 0}, publish_frames: true}\n"
        "  pi-2: {source: {kind: relay, camera: cam-1}}\n"
    )
    return load_site_config(path)


@pytest.fixture
def messages(tmp_path: Path) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for topic, payload in discovery_messages(_site(tmp_path, enabled=True), MANIFEST):
        assert payload is not None
        out.append((topic, json.loads(json.dumps(payload))))  # as it travels: JSON
    return out


def test_every_field_is_documented(messages: list[tuple[str, dict[str, Any]]]) -> None:
    for topic, payload in messages:
        component = topic.split("/")[1]
        assert set(payload) <= DOCUMENTED[component], (topic, set(payload) - DOCUMENTED[component])
        assert REQUIRED[component] <= set(payload)
        assert set(payload["device"]) <= DEVICE
        assert set(payload["origin"]) <= ORIGIN
        assert "name" in payload["origin"]
        for avail in payload.get("availability", []):
            assert set(avail) <= AVAILABILITY
            assert "topic" in avail
        object_id = topic.split("/")[3]
        assert topic == f"homeassistant/{component}/edvit_home/{object_id}/config"
        assert payload["unique_id"] == object_id
        assert payload["default_entity_id"] == f"{component}.{object_id}"
        assert "object_id" not in payload


def test_entities_of_a_site(messages: list[tuple[str, dict[str, Any]]]) -> None:
    by_topic = dict(messages)
    assert sorted(by_topic) == [
        "homeassistant/binary_sensor/edvit_home/home_edvit_node_cam_1/config",
        "homeassistant/binary_sensor/edvit_home/home_edvit_node_pi_2/config",
        "homeassistant/event/edvit_home/home_edvit_detection/config",
        "homeassistant/sensor/edvit_home/home_edvit/config",
        "homeassistant/sensor/edvit_home/home_edvit_count_go/config",
        "homeassistant/sensor/edvit_home/home_edvit_count_stop/config",
        "homeassistant/sensor/edvit_home/home_edvit_dropped/config",
        "homeassistant/sensor/edvit_home/home_edvit_latency_p99/config",
    ]
    node = by_topic["homeassistant/binary_sensor/edvit_home/home_edvit_node_cam_1/config"]
    assert node["state_topic"] == "edvit/home/node/cam-1/status"
    assert (node["payload_on"], node["payload_off"]) == ("online", "offline")
    assert node["device_class"] == "connectivity"
    latency = by_topic["homeassistant/sensor/edvit_home/home_edvit_latency_p99/config"]
    assert latency["state_topic"] == "edvit/home/aggregator/stats"
    assert latency["entity_category"] == "diagnostic"
    assert latency["unit_of_measurement"] == "ms"


def test_label_sensor_does_not_flood_the_recorder(
    messages: list[tuple[str, dict[str, Any]]], tmp_path: Path
) -> None:
    label = dict(messages)["homeassistant/sensor/edvit_home/home_edvit/config"]
    assert label["state_topic"] == "edvit/home/result"
    assert label["value_template"] == "{{ value_json.label }}"
    template = label["json_attributes_template"]
    assert "value_json.complete" in template
    for field in PER_TICK:
        assert f"value_json.{field}" not in template
    # a dead site goes unavailable: a few ticks of silence, never less than 10 s
    assert label["expire_after"] == expire_after_s(_site(tmp_path, enabled=True)) == 10
    [avail] = label["availability"]
    assert avail["topic"] == "edvit/home/aggregator/status"
    assert (avail["payload_available"], avail["payload_not_available"]) == ("online", "offline")


def test_event_entity_and_count_sensors(messages: list[tuple[str, dict[str, Any]]]) -> None:
    by_topic = dict(messages)
    event = by_topic["homeassistant/event/edvit_home/home_edvit_detection/config"]
    assert event["state_topic"] == "edvit/home/event"
    assert event["event_types"] == ["stop", "go"]  # the payload's event_type is the label
    [avail] = event["availability"]
    assert avail["topic"] == "edvit/home/aggregator/status"
    stop = by_topic["homeassistant/sensor/edvit_home/home_edvit_count_stop/config"]
    assert stop["state_topic"] == stop["json_attributes_topic"] == "edvit/home/count/stop"
    assert stop["value_template"] == "{{ value_json.last_minute }}"
    for window in ("last_hour", "since_start"):
        assert f"value_json.{window}" in stop["json_attributes_template"]
    assert "expire_after" not in stop  # counts are retained and change only with events


def test_disabled_discovery_clears_the_same_topics(tmp_path: Path) -> None:
    enabled = [t for t, _ in discovery_messages(_site(tmp_path, enabled=True), MANIFEST)]
    disabled = discovery_messages(_site(tmp_path, enabled=False), MANIFEST)
    assert [t for t, _ in disabled] == enabled
    assert all(payload is None for _, payload in disabled)


def test_disabled_events_clear_their_entities(tmp_path: Path) -> None:
    messages = discovery_messages(_site(tmp_path, enabled=True, events=False), MANIFEST)
    cleared = sorted(t.split("/")[3] for t, payload in messages if payload is None)
    assert cleared == ["home_edvit_count_go", "home_edvit_count_stop", "home_edvit_detection"]
