"""What `edvit demo` shows: each result against the ground truth, and the final table."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any, TextIO

from edvit.stats import percentiles


@dataclass
class Tally:
    """What the results showed, tick by tick."""

    truth: list[int]
    classes: list[str]
    results: list[dict[str, Any]] = field(default_factory=list)
    correct: int = 0
    node_stats: dict[str, dict[str, Any]] = field(default_factory=dict)
    status: dict[str, str] = field(default_factory=dict)
    ready_at: float | None = None  # when every process was online: earlier ticks don't count

    def add(self, result: dict[str, Any]) -> str:
        expected = self.truth[result["tick"] % len(self.truth)]
        label = self.classes.index(result["label"]) if result["label"] in self.classes else -1
        ok = label == expected
        self.correct += ok
        self.results.append(result)
        missing = f" missing {','.join(result['missing'])}" if result["missing"] else ""
        return (
            f"tick {result['tick']:>10}  {result['label']:>6} ({result['score']:.2f})  "
            f"truth {self.classes[expected]:>6} {'✓' if ok else '✗'}  "
            f"{'complete' if result['complete'] else 'partial '}{missing}  "
            f"{result['latency_ms']:.0f} ms"
        )

    def summary(self) -> dict[str, Any]:
        n = len(self.results)
        latency = percentiles(r["latency_ms"] for r in self.results)  # as the stats topics
        return {
            "ticks": n,
            "accuracy": self.correct / n if n else None,
            "complete_share": sum(r["complete"] for r in self.results) / n if n else None,
            "latency_ms_p50": latency["p50"],
            "latency_ms_p99": latency["p99"],
            "per_node": {
                node: {
                    "inference_ms_p50": s.get("inference_ms", {}).get("p50"),
                    "inference_ms_p99": s.get("inference_ms", {}).get("p99"),
                    "ticks": s.get("ticks"),
                    "skipped": s.get("skipped"),
                }
                for node, s in sorted(self.node_stats.items())
            },
        }


def print_table(summary: dict[str, Any], out: TextIO = sys.stdout) -> None:
    def fmt(v: Any, spec: str) -> str:
        return format(v, spec) if isinstance(v, int | float) else "–"

    print("", file=out)
    print(f"ticks           {summary['ticks']}", file=out)
    print(f"accuracy        {fmt(summary['accuracy'], '.4f')}", file=out)
    print(f"complete share  {fmt(summary['complete_share'], '.4f')}", file=out)
    print(
        f"latency ms      p50 {fmt(summary['latency_ms_p50'], '.1f')}  "
        f"p99 {fmt(summary['latency_ms_p99'], '.1f')}",
        file=out,
    )
    for node, s in summary["per_node"].items():
        print(
            f"  {node:<12} inference ms p50 {fmt(s['inference_ms_p50'], '.2f')}  "
            f"p99 {fmt(s['inference_ms_p99'], '.2f')}  ticks {s['ticks']}  "
            f"skipped {s['skipped']}",
            file=out,
        )
