"""Request counts and latencies of the HTTP service, in Prometheus's text format (no dependency).

    metrics = Metrics()
    metrics.observe("/recommend", "POST", 200, 0.0031)            # seconds
    metrics.observe_funnel("user", {"retrieve": 0.6, "rank": 0.8})  # milliseconds, as the funnel says
    metrics.render()  # -> text/plain; version=0.0.4

Series (``route`` is the route's template, ``/similar-items/{item_id}``, or ``unmatched``):

    recfunnel_http_requests_total{route,method,status}            counter
    recfunnel_http_request_duration_seconds{route}                histogram (cumulative buckets)
    recfunnel_http_request_latency_seconds{route,quantile}        summary: p50/p90/p99 of the last
                                                                  WINDOW requests of the route
    recfunnel_funnel_stage_seconds{stage}                         summary: sum and count per stage
    recfunnel_recommendations_total{source}                       counter: user | features | popular

and, from the app (``add_source``): batches, requests refused with 503 by reason, the queue's
length, reloads and the model version served.

One lock guards every update: the endpoints run on worker threads.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections import defaultdict, deque
from collections.abc import Callable
from pathlib import Path

import numpy as np

__all__ = ["Metrics", "CONTENT_TYPE", "BUCKETS", "label", "memory_mib"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# seconds; the funnel answers in a few ms, so most of the resolution sits below 100 ms
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
QUANTILES = (0.5, 0.9, 0.99)
WINDOW = 4096  # latest requests per route the quantiles are taken over


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: dict[tuple[str, str, int], int] = defaultdict(int)
        self._buckets: dict[str, list[int]] = defaultdict(lambda: [0] * (len(BUCKETS) + 1))  # last: +Inf
        self._sum: dict[str, float] = defaultdict(float)
        self._recent: dict[str, deque[float]] = defaultdict(lambda: deque(maxlen=WINDOW))
        self._stage_sum: dict[str, float] = defaultdict(float)  # seconds
        self._stage_count: dict[str, int] = defaultdict(int)
        self._sources: dict[str, int] = defaultdict(int)
        self._more: list[Callable[[], list[str]]] = []

    def add_source(self, lines: Callable[[], list[str]]) -> None:
        """More series, rendered by ``lines()`` at each scrape (gauges and counters kept elsewhere)."""
        self._more.append(lines)

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        """One finished request."""
        with self._lock:
            self._requests[route, method, status] += 1
            self._buckets[route][bisect_left(BUCKETS, seconds)] += 1
            self._sum[route] += seconds
            self._recent[route].append(seconds)

    def observe_funnel(self, source: str, timings_ms: dict[str, float]) -> None:
        """One recommendation: where it came from and its stage timings (milliseconds)."""
        with self._lock:
            self._sources[source] += 1
            for stage, ms in timings_ms.items():
                self._stage_sum[stage] += ms / 1000
                self._stage_count[stage] += 1

    def requests(self, route: str | None = None, status: int | None = None) -> int:
        """Requests counted so far, of one route and/or status."""
        with self._lock:
            return sum(n for (r, _, s), n in self._requests.items() if route in (None, r) and status in (None, s))

    def render(self) -> str:
        with self._lock:
            lines = _requests_lines(self._requests)
            lines += _histogram_lines(self._buckets, self._sum)
            lines += _summary_lines({route: list(v) for route, v in self._recent.items()}, self._sum, self._buckets)
            lines += [
                "# HELP recfunnel_funnel_stage_seconds Time spent in each funnel stage.",
                "# TYPE recfunnel_funnel_stage_seconds summary",
            ]
            for stage in sorted(self._stage_sum):
                lines.append(f'recfunnel_funnel_stage_seconds_sum{{stage="{stage}"}} {self._stage_sum[stage]:.6f}')
                lines.append(f'recfunnel_funnel_stage_seconds_count{{stage="{stage}"}} {self._stage_count[stage]}')
            lines += [
                "# HELP recfunnel_recommendations_total Recommendations by source (user, features, popular).",
                "# TYPE recfunnel_recommendations_total counter",
            ]
            lines += [f'recfunnel_recommendations_total{{source="{s}"}} {n}' for s, n in sorted(self._sources.items())]
        for more in self._more:
            lines += more()
        return "\n".join(lines) + "\n"


def label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _requests_lines(requests: dict[tuple[str, str, int], int]) -> list[str]:
    lines = [
        "# HELP recfunnel_http_requests_total HTTP requests by route, method and status.",
        "# TYPE recfunnel_http_requests_total counter",
    ]
    for (route, method, status), n in sorted(requests.items()):
        labels = f'route="{label(route)}",method="{method}",status="{status}"'
        lines.append(f"recfunnel_http_requests_total{{{labels}}} {n}")
    return lines


def _histogram_lines(buckets: dict[str, list[int]], sums: dict[str, float]) -> list[str]:
    name = "recfunnel_http_request_duration_seconds"
    lines = [
        f"# HELP {name} HTTP request latency (seconds), from the request's arrival to its last byte.",
        f"# TYPE {name} histogram",
    ]
    for route in sorted(buckets):
        counts = np.cumsum(buckets[route])
        text = label(route)
        for bound, count in zip([*map(str, BUCKETS), "+Inf"], counts.tolist()):
            lines.append(f'{name}_bucket{{route="{text}",le="{bound}"}} {count}')
        lines.append(f'{name}_sum{{route="{text}"}} {sums[route]:.6f}')
        lines.append(f'{name}_count{{route="{text}"}} {int(counts[-1])}')
    return lines


def _summary_lines(recent: dict[str, list[float]], sums: dict[str, float], buckets: dict[str, list[int]]) -> list[str]:
    name = "recfunnel_http_request_latency_seconds"
    lines = [
        f"# HELP {name} HTTP request latency quantiles (seconds) over the last {WINDOW} requests of a route.",
        f"# TYPE {name} summary",
    ]
    for route in sorted(recent):
        text = label(route)
        values = np.quantile(recent[route], QUANTILES) if recent[route] else [float("nan")] * len(QUANTILES)
        lines += [f'{name}{{route="{text}",quantile="{q}"}} {v:.6f}' for q, v in zip(QUANTILES, values)]
        lines.append(f'{name}_sum{{route="{text}"}} {sums[route]:.6f}')
        lines.append(f'{name}_count{{route="{text}"}} {sum(buckets[route])}')
    return lines


def memory_mib(pid: int | str = "self") -> dict[str, float] | None:
    """A process's memory (Linux /proc; None elsewhere), MiB: ``rss`` resident, ``pss`` its share
    (pages shared with others, e.g. forked workers' models, counted once across them), ``private``
    its own pages alone."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return None
    kib: dict[str, int] = {}
    for line in text.splitlines()[1:]:
        name, _, rest = line.partition(":")
        fields = rest.split()
        if fields and fields[0].isdigit():
            kib[name] = int(fields[0])
    private = kib.get("Private_Clean", 0) + kib.get("Private_Dirty", 0)
    return {
        name: round(value / 1024, 1)
        for name, value in (("rss", kib.get("Rss", 0)), ("pss", kib.get("Pss", 0)), ("private", private))
    }
