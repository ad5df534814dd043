"""Home Assistant MQTT discovery: the retained configs that make a site appear as entities.

Entities (all on one device per site):
- the label sensor: state = the fused label; attributes are only what changes rarely
  (complete, missing), so the recorder writes a row when the answer changes, not every tick;
  `expire_after` makes it unavailable when results stop (a dead site keeps no stale label);
- one connectivity binary sensor per node, from its retained status;
- diagnostic sensors from the aggregator's stats topic (latency p99, dropped messages);
- with events enabled, an event entity fed by `edvit/<site>/event` (its `event_types` are the
  bundle's classes but the background ones), and per such class a sensor of its events in the
  last minute, the other windows as attributes (they change only when the counts change).
Every entity fed by the aggregator is unavailable unless its status is `online`.

With discovery disabled the same topics are published empty (retained), which is how Home
Assistant is told to remove entities an earlier run created; so are the event and count
entities when events are disabled.
"""

from __future__ import annotations

import re
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from edvit import topics
from edvit.bundle import Manifest
from edvit.config.site import SiteConfig

MIN_EXPIRE_S = 10  # results come every tick; silence for this long means the site is dead
EXPIRE_TICKS = 5

Discovery = list[tuple[str, dict[str, Any] | None]]
Entity = tuple[str, str, dict[str, Any]]  # component, object id, its fields


def _origin() -> dict[str, str]:
    try:
        sw = version("edvit")
    except PackageNotFoundError:
        sw = "unknown"
    return {"name": "edvit", "sw_version": sw}


def _only_online(status_topic: str) -> dict[str, str]:
    """Availability from a retained status: `online` is available; offline or stopped not."""
    on, off = topics.ONLINE, topics.OFFLINE
    return {
        "topic": status_topic,
        "payload_available": on,
        "payload_not_available": off,
        "value_template": "{{ '" + on + "' if value == '" + on + "' else '" + off + "' }}",
    }


def expire_after_s(cfg: SiteConfig) -> int:
    """Seconds without a result after which the label sensor goes unavailable."""
    return max(MIN_EXPIRE_S, round(EXPIRE_TICKS * cfg.tick.period_s + cfg.tick.deadline_s))


def _slug(cfg: SiteConfig) -> str:
    ha = cfg.aggregator.home_assistant
    return ha.object_id or f"{cfg.site}_edvit".replace(".", "_").replace("-", "_")


def _event_entities(cfg: SiteConfig, manifest: Manifest, slug: str) -> list[Entity]:
    """The detection event entity and one count sensor per class that fires."""
    site = cfg.site
    fed = {"availability": [_only_online(topics.aggregator_status(site))]}
    labels = manifest.event_classes
    entities: list[Entity] = [
        (
            "event",
            f"{slug}_detection",
            {
                "name": "Detection",
                "state_topic": topics.event(site),
                "event_types": labels,
                "icon": "mdi:bullhorn-outline",
                **fed,
            },
        )
    ]
    for label in labels:
        count = topics.count(site, label)
        entities.append(
            (
                "sensor",
                f"{slug}_count_{re.sub(r'[^A-Za-z0-9_-]', '_', label)}",
                {
                    "name": f"{label} last minute",
                    "state_topic": count,
                    "value_template": "{{ value_json.last_minute }}",
                    "json_attributes_topic": count,
                    "json_attributes_template": (
                        "{{ {'last_hour': value_json.last_hour, 'since_start': "
                        "value_json.since_start, 'started': value_json.started} | tojson }}"
                    ),
                    "unit_of_measurement": "events",
                    "state_class": "measurement",
                    "icon": "mdi:counter",
                    **fed,
                },
            )
        )
    return entities


def discovery_messages(cfg: SiteConfig, manifest: Manifest) -> Discovery:
    """(config topic, payload) for every entity of the site and its bundle; payload None when
    discovery (or, for the event and count entities, events) is disabled: publish it empty
    to remove the entity."""
    ha = cfg.aggregator.home_assistant
    slug = _slug(cfg)
    site = cfg.site
    device = {
        "identifiers": [f"edvit_{site}"],
        "name": ha.name or f"edvit {site}",
        "manufacturer": "edvit",
        "model": "ED-ViT site",
    }
    fed = {"availability": [_only_online(topics.aggregator_status(site))]}
    result = topics.result(site)
    stats = topics.aggregator_stats(site)
    entities: list[Entity] = [
        (
            "sensor",
            slug,
            {
                "name": "Label",
                "state_topic": result,
                "value_template": "{{ value_json.label }}",
                "json_attributes_topic": result,
                "json_attributes_template": (
                    "{{ {'complete': value_json.complete, 'missing': value_json.missing}"
                    " | tojson }}"
                ),
                "expire_after": expire_after_s(cfg),
                "icon": "mdi:eye",
                **fed,
            },
        ),
        (
            "sensor",
            f"{slug}_latency_p99",
            {
                "name": "Latency p99",
                "state_topic": stats,
                "value_template": "{{ value_json.latency_ms.p99 }}",
                "unit_of_measurement": "ms",
                "state_class": "measurement",
                "entity_category": "diagnostic",
                "icon": "mdi:timer-outline",
                **fed,
            },
        ),
        (
            "sensor",
            f"{slug}_dropped",
            {
                "name": "Dropped messages",
                "state_topic": stats,
                "value_template": "{{ value_json.dropped.values() | sum }}",
                "state_class": "total_increasing",
                "entity_category": "diagnostic",
                "icon": "mdi:email-remove-outline",
                **fed,
            },
        ),
    ]
    for node in sorted(cfg.nodes):
        node_slug = f"{slug}_node_{node}".replace(".", "_").replace("-", "_")
        status = topics.node_status(site, node)
        entities.append(
            (
                "binary_sensor",
                node_slug,
                {
                    "name": f"Node {node}",
                    "state_topic": status,
                    "payload_on": topics.ONLINE,
                    "payload_off": topics.OFFLINE,
                    "value_template": _only_online(status)["value_template"],
                    "device_class": "connectivity",
                    "entity_category": "diagnostic",
                },
            )
        )
    events = cfg.aggregator.events.enabled
    tagged = [(e, True) for e in entities]
    tagged += [(e, events) for e in _event_entities(cfg, manifest, slug)]
    out: Discovery = []
    for (component, object_id, fields), wanted in tagged:
        topic = f"{ha.discovery_prefix}/{component}/{topics.ha_node_id(site)}/{object_id}/config"
        payload = {
            **fields,
            "device": device,
            "origin": _origin(),
            "unique_id": object_id,
            "default_entity_id": f"{component}.{object_id}",
        }
        out.append((topic, payload if ha.enabled and wanted else None))
    return out
