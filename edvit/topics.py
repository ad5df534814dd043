"""MQTT topic names and status payloads: the one place every part spells them.

    edvit/<site>/node/<node>/feat/<sub>  msgpack feature messages (edvit.wire), QoS 1
    edvit/<site>/node/<node>/status      retained online / offline (LWT) / stopped
    edvit/<site>/node/<node>/stats       JSON node stats
    edvit/<site>/node/<node>/session     retained token of the process logged in as the node
    edvit/<site>/result                  JSON results of the aggregator
    edvit/<site>/event                   JSON events (a class detected), QoS 1, not retained
    edvit/<site>/count/<label>           retained JSON event counts of a class over windows
    edvit/<site>/aggregator/status       retained online / offline (LWT) / stopped / no_data
    edvit/<site>/aggregator/stats        JSON aggregator stats
    edvit/<site>/aggregator/session      retained token of the aggregator process
    edvit/<site>/frame/<camera>          relay mode: msgpack JPEG frames (edvit.wire)
    <ha prefix>/<component>/edvit_<site>/<object_id>/config   Home Assistant discovery

Everything a node writes lies under its own `node/<node>/` (or its `frame/<node>`), so the
broker's ACL can give each node's login exactly those topics, and the aggregator knows from
the topic which node sent a feature. Ids become topic levels, so one with `/`, `+` or `#`
would silently publish to (or subscribe to) other topics; every builder refuses such an id.
"""

from __future__ import annotations

from typing import Final

from edvit.ids import IdError, check_id

PREFIX: Final = "edvit"

ONLINE: Final = "online"
OFFLINE: Final = "offline"  # the last will: the broker publishes it when the client vanishes
STOPPED: Final = "stopped"  # a clean exit, published by the client itself before it leaves
NO_DATA: Final = "no_data"  # the aggregator is up but no node has sent features for a while


def node_prefix(site: str, node: str) -> str:
    """Everything node `node` publishes lies under this (its ACL grant)."""
    return f"{PREFIX}/{check_id(site, 'site')}/node/{check_id(node, 'node id')}"


def feat(site: str, node: str, sub: str) -> str:
    """Where node `node` publishes the features of its sub-model `sub`."""
    return f"{node_prefix(site, node)}/feat/{check_id(sub, 'sub-model id')}"


def feat_wildcard(site: str) -> str:
    """What the aggregator subscribes to: every node's features of `site`."""
    return f"{PREFIX}/{check_id(site, 'site')}/node/+/feat/+"


def parse_feat_topic(site: str, topic: str) -> tuple[str, str] | None:
    """(node, sub-model) of a feature topic of `site`, or None if `topic` is not one."""
    levels = topic.split("/")
    if len(levels) != 6 or levels[:3] != [PREFIX, site, "node"] or levels[4] != "feat":
        return None
    node, sub = levels[3], levels[5]
    return (node, sub) if node and sub else None


def result(site: str) -> str:
    return f"{PREFIX}/{check_id(site, 'site')}/result"


def event(site: str) -> str:
    return f"{PREFIX}/{check_id(site, 'site')}/event"


def count(site: str, label: str) -> str:
    """Where the aggregator keeps (retained) the event counts of class `label`.

    Class names are looser than ids (`_silence_`), but one is a topic level all the same."""
    if not label or any(c in label for c in "/+#\x00"):
        raise IdError(f"class {label!r} cannot be a topic level (empty, or '/', '+', '#', NUL)")
    return f"{PREFIX}/{check_id(site, 'site')}/count/{label}"


def node_status(site: str, node: str) -> str:
    return f"{node_prefix(site, node)}/status"


def node_stats(site: str, node: str) -> str:
    return f"{node_prefix(site, node)}/stats"


def node_session(site: str, node: str) -> str:
    return f"{node_prefix(site, node)}/session"


def aggregator_status(site: str) -> str:
    return f"{PREFIX}/{check_id(site, 'site')}/aggregator/status"


def aggregator_stats(site: str) -> str:
    return f"{PREFIX}/{check_id(site, 'site')}/aggregator/stats"


def aggregator_session(site: str) -> str:
    return f"{PREFIX}/{check_id(site, 'site')}/aggregator/session"


def frame(site: str, camera: str) -> str:
    """Relay mode: where camera node `camera` publishes JPEG frames for compute-only nodes."""
    return f"{PREFIX}/{check_id(site, 'site')}/frame/{check_id(camera, 'camera node id')}"


def ha_node_id(site: str) -> str:
    """The site's level in Home Assistant discovery topics (its `node_id`, which allows no
    `.`): the aggregator's ACL grant is every config under it and nothing else."""
    return f"{PREFIX}_{check_id(site, 'site')}".replace(".", "_")


def client_id(site: str, role: str) -> str:
    """A stable MQTT client id, e.g. `edvit-home-aggregator`, `edvit-home-node-cam-1`.

    Stable so that a restarted process takes over its own session, and unique per role so
    that two parts of one site never kick each other off the broker.
    """
    return f"{PREFIX}-{check_id(site, 'site')}-{check_id(role, 'role')}"
