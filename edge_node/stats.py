"""The node's counters and its stats message (README: edge-node stats).

The tick loop and paho's thread count; the stats thread builds the message every
`stats_interval_s` (and once more at stop) from one consistent snapshot of the counters.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from edge_node.counters import Counters
from edge_node.runner import SubmodelRunner, latency_summary
from edge_node.sources import RelaySource, Source
from edvit.mqtt import MqttClient
from edvit.stats import Window

COUNTERS = ("ticks", "published", "skipped", "misses", "errors", "unsent", "frames", "rejected")
"""`rejected`: relayed frames refused before they reached the source (reported under it)."""


class NodeStats:
    """What a node counts, and the stats message built from it."""

    def __init__(self, node_id: str, period_s: float) -> None:
        self.node_id = node_id
        self.period_s = period_s
        self.counters = Counters(COUNTERS)
        self.tick_time = Window()
        """Seconds of work per tick (capture to the last publish)."""
        self.last_tick: int | None = None
        """Written by the tick thread only (a plain assignment); read by the stats thread."""
        self._started_at = time.monotonic()

    def message(
        self,
        now: float,
        sub_ids: Sequence[str],
        runner: SubmodelRunner | None,
        source: Source | None,
        client: MqttClient | None,
    ) -> dict[str, Any]:
        """Counters since start, inference and tick-work percentiles over the recent window."""
        inference: dict[str, Any] = {"p50": None, "p99": None, "per_submodel": {}}
        if runner is not None:
            summary = runner.stats()
            inference = {
                "p50": summary["p50_ms"],
                "p99": summary["p99_ms"],
                "per_submodel": {
                    s: {"p50": v["p50_ms"], "p99": v["p99_ms"]}
                    for s, v in summary["per_submodel"].items()
                },
            }
        work = latency_summary(self.tick_time)
        counts = self.counters.snapshot()
        rejected = counts.pop("rejected")
        source_stats: dict[str, Any] = {}
        if source is not None:
            source_stats = {"kind": source.kind, "name": source.name, **source.stats.as_dict()}
            if isinstance(source, RelaySource):
                source_stats["rejected"] = rejected
        return {
            "node": self.node_id,
            "ts": round(now, 3),
            "uptime_s": round(time.monotonic() - self._started_at, 1),
            "submodels": list(sub_ids),
            "period_s": self.period_s,
            "ticks": counts["ticks"],
            "last_tick": self.last_tick,
            "published": counts["published"],
            "skipped": counts["skipped"],
            "misses": counts["misses"],
            "errors": counts["errors"],
            "unsent": counts["unsent"],
            "frames": counts["frames"],
            "inference_ms": inference,
            "tick_ms": {"p50": work["p50_ms"], "p99": work["p99_ms"]},
            "reconnects": client.reconnects if client is not None else 0,
            "connected": client.connected if client is not None else False,
            "source": source_stats,
        }
