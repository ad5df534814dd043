"""MQTT topic names and status payloads: the one place every part spells them.

    edvit/<site>/feat/<sub>             msgpack feature messages (edvit.wire), QoS 1
    edvit/<site>/result                 JSON results of the aggregator
    edvit/<site>/node/<node>/status     retained online / offline (LWT) / stopped
    edvit/<site>/node/<node>/stats      JSON node stats
    edvit/<site>/aggregator/status      retained online / offline (LWT) / stopped
    edvit/<site>/aggregator/stats       JSON aggregator stats
    edvit/<site>/frame/<camera>         relay mode: msgpack JPEG frames (edvit.wire)

Ids become topic levels, so one with `/`, `+` or `#` would silently publish to (or subscribe
to) other topics; every builder refuses such an id instead.
"""

from __future__ import annotations

from typing import Final

from edvit.ids import check_id

PREFIX: Final = "edvit"

ONLINE: Final = "online"
OFFLINE: Final = "offline"  # the last will: the broker publishes it when the client vanishes
STOPPED: Final = "stopped"  # a clean exit, published by the client itself before it leaves
NO_DATA: Final = "no_data"  # the aggregator is up but no node has sent features for a while


def feat(site: str, sub: str) -> str:
    """Where the node running sub-model `sub` publishes its features."""
    return f"{PREFIX}/{check_id(site, 'site')}/feat/{check_id(sub, 'sub-model id')}"


def feat_wildcard(site: str) -> str:
    """What the aggregator subscribes to: every sub-model's features of `site`."""
    return f"{PREFIX}/{check_id(site, 'site')}/feat/+"


def sub_of_feat_topic(site: str, topic: str) -> str | None:
    """The sub-model id of a feature topic of `site`, or None if `topic` is not one."""
    prefix = f"{PREFIX}/{site}/feat/"
    if not topic.startswith(prefix):
        return None
    sub = topic[len(prefix) :]
    return sub if sub and "/" not in sub else None


def result(site: str) -> str:
    return f"{PREFIX}/{check_id(site, 'site')}/result"


def node_status(site: str, node: str) -> str:
    return f"{PREFIX}/{check_id(site, 'site')}/node/{check_id(node, 'node id')}/status"


def node_stats(site: str, node: str) -> str:
    return f"{PREFIX}/{check_id(site, 'site')}/node/{check_id(node, 'node id')}/stats"


def aggregator_status(site: str) -> str:
    return f"{PREFIX}/{check_id(site, 'site')}/aggregator/status"


def aggregator_stats(site: str) -> str:
    return f"{PREFIX}/{check_id(site, 'site')}/aggregator/stats"


def frame(site: str, camera: str) -> str:
    """Relay mode: where camera node `camera` publishes JPEG frames for compute-only nodes."""
    return f"{PREFIX}/{check_id(site, 'site')}/frame/{check_id(camera, 'camera node id')}"


def client_id(site: str, role: str) -> str:
    """A stable MQTT client id, e.g. `edvit-home-aggregator`, `edvit-home-node-cam-1`.

    Stable so that a restarted process takes over its own session, and unique per role so
    that two parts of one site never kick each other off the broker.
    """
    return f"{PREFIX}-{check_id(site, 'site')}-{check_id(role, 'role')}"
