"""The Temporal SDK's own metrics (polls, task latencies, slots, sticky cache…), served
on the engine's endpoint beside the ``loyalty_*`` ones.

The SDK's core can serve Prometheus itself, on an address of its own; instead its
updates are buffered (`temporalio.runtime.MetricBuffer`) and drained here, so that one
endpoint per process has everything, port 0 works, and a taken port is reported like
the engine's own. Counters and gauges keep their last totals; histogram values go into
fixed buckets (seconds: durations are read as seconds).
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from temporalio.runtime import (
    BUFFERED_METRIC_KIND_COUNTER,
    BUFFERED_METRIC_KIND_GAUGE,
    LoggingConfig,
    MetricBuffer,
    MetricBufferDurationFormat,
    Runtime,
    TelemetryConfig,
)

# Updates the core may hold between two drains; past it they are dropped (and logged).
BUFFER_SIZE = 100_000
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

Key = tuple[str, tuple[tuple[str, str], ...]]


@dataclass
class _Histogram:
    counts: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS) + 1))
    total: float = 0.0


class TemporalMetrics(Collector):
    """Keeps the totals of the SDK's buffered updates and serves them.

    `drain` runs on the event loop every second and at each scrape (the HTTP server's
    thread); a lock keeps the two apart.
    """

    def __init__(self, buffer: MetricBuffer) -> None:
        self._buffer = buffer
        self._lock = threading.Lock()
        self._help: dict[str, str] = {}
        self._counters: dict[Key, float] = {}
        self._gauges: dict[Key, float] = {}
        self._histograms: dict[Key, _Histogram] = {}

    def drain(self) -> None:
        """Take the updates the SDK buffered since the last drain."""
        with self._lock:
            for update in self._buffer.retrieve_updates():
                metric = update.metric
                self._help.setdefault(metric.name, metric.description or metric.name)
                labels = tuple(sorted((k, str(v)) for k, v in update.attributes.items()))
                key = (metric.name, labels)
                if metric.kind == BUFFERED_METRIC_KIND_COUNTER:
                    self._counters[key] = self._counters.get(key, 0) + update.value
                elif metric.kind == BUFFERED_METRIC_KIND_GAUGE:
                    self._gauges[key] = update.value
                else:
                    histogram = self._histograms.setdefault(key, _Histogram())
                    histogram.counts[bisect.bisect_left(BUCKETS, update.value)] += 1
                    histogram.total += update.value

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily]:
        """The SDK's metrics as Prometheus families, drained first."""
        self.drain()
        with self._lock:
            families: dict[str, CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily]
            families = {}
            for (name, labels), value in self._counters.items():
                counter = families.setdefault(name, CounterMetricFamily(name, self._help[name]))
                counter.samples.append(_sample(f"{name}_total", labels, value))
            for (name, labels), value in self._gauges.items():
                gauge = families.setdefault(name, GaugeMetricFamily(name, self._help[name]))
                gauge.samples.append(_sample(name, labels, value))
            for (name, labels), histogram in self._histograms.items():
                family = families.setdefault(name, HistogramMetricFamily(name, self._help[name]))
                cumulative = 0
                for bound, count in zip((*BUCKETS, float("inf")), histogram.counts, strict=True):
                    cumulative += count
                    le = "+Inf" if bound == float("inf") else repr(bound)
                    family.samples.append(
                        _sample(f"{name}_bucket", (*labels, ("le", le)), cumulative)
                    )
                family.samples.append(_sample(f"{name}_count", labels, cumulative))
                family.samples.append(_sample(f"{name}_sum", labels, histogram.total))
        yield from families.values()


def _sample(name: str, labels: tuple[tuple[str, str], ...], value: float) -> Sample:
    return Sample(name, dict(labels), value)


def runtime_with_metrics(logging: LoggingConfig | None = None) -> tuple[Runtime, MetricBuffer]:
    """A Temporal runtime whose metrics are buffered for `TemporalMetrics`; ``logging``
    as the caller forwards the core's logs (default: the SDK's)."""
    buffer = MetricBuffer(BUFFER_SIZE, MetricBufferDurationFormat.SECONDS)
    telemetry = TelemetryConfig(
        logging=logging if logging is not None else LoggingConfig.default, metrics=buffer
    )
    return Runtime(telemetry=telemetry), buffer
