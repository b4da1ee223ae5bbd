"""Process-local metrics: counters, gauges and histograms, exported as Prometheus text.

Deliberately tiny (no client library): the runtime records, the edge and nodes expose
``registry.render()`` on their metrics endpoint, and tests read values back directly.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Mapping
from typing import final

__all__ = ["Counter", "Gauge", "Histogram", "MetricsRegistry", "registry"]

Labels = tuple[tuple[str, str], ...]


def _labels(labels: Mapping[str, str] | None) -> Labels:
    return tuple(sorted(labels.items())) if labels else ()


def _fmt(name: str, labels: Labels) -> str:
    if not labels:
        return name
    inner = ",".join(f'{k}="{v}"' for k, v in labels)
    return f"{name}{{{inner}}}"


@final
class Counter:
    """A monotonically increasing count per label set."""

    def __init__(self, name: str, help_text: str) -> None:
        self.name = name
        self.help = help_text
        self._values: dict[Labels, float] = {}

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = _labels(labels)
        self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, **labels: str) -> float:
        return self._values.get(_labels(labels), 0.0)

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter"]
        lines += [f"{_fmt(self.name, k)} {v}" for k, v in self._values.items()]
        return lines


@final
class Gauge:
    """A value that goes up and down, per label set."""

    def __init__(self, name: str, help_text: str) -> None:
        self.name = name
        self.help = help_text
        self._values: dict[Labels, float] = {}

    def set(self, value: float, **labels: str) -> None:
        self._values[_labels(labels)] = value

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = _labels(labels)
        self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, **labels: str) -> float:
        return self._values.get(_labels(labels), 0.0)

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} gauge"]
        lines += [f"{_fmt(self.name, k)} {v}" for k, v in self._values.items()]
        return lines


_DEFAULT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@final
class Histogram:
    """Observations in cumulative buckets (seconds by default), per label set."""

    def __init__(self, name: str, help_text: str, buckets: tuple[float, ...] = _DEFAULT_BUCKETS):
        self.name = name
        self.help = help_text
        self.buckets = buckets
        self._counts: dict[Labels, list[int]] = {}
        self._sums: dict[Labels, float] = {}

    def observe(self, value: float, **labels: str) -> None:
        key = _labels(labels)
        counts = self._counts.get(key)
        if counts is None:
            counts = self._counts[key] = [0] * (len(self.buckets) + 1)
            self._sums[key] = 0.0
        counts[bisect.bisect_left(self.buckets, value)] += 1
        self._sums[key] += value

    def count(self, **labels: str) -> int:
        return sum(self._counts.get(_labels(labels), ()))

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        for key, counts in self._counts.items():
            running = 0
            for bound, count in zip((*self.buckets, float("inf")), counts, strict=True):
                running += count
                le = "+Inf" if bound == float("inf") else repr(bound)
                lines.append(f"{_fmt(self.name + '_bucket', (*key, ('le', le)))} {running}")
            lines.append(f"{_fmt(self.name + '_sum', key)} {self._sums[key]}")
            lines.append(f"{_fmt(self.name + '_count', key)} {running}")
        return lines


@final
class MetricsRegistry:
    """Named metrics; asking twice for the same name returns the same metric."""

    def __init__(self) -> None:
        self._metrics: dict[str, Counter | Gauge | Histogram] = {}
        self._lock = threading.Lock()

    def counter(self, name: str, help_text: str = "") -> Counter:
        with self._lock:
            metric = self._metrics.setdefault(name, Counter(name, help_text))
        assert isinstance(metric, Counter), f"{name} is registered as another kind"
        return metric

    def gauge(self, name: str, help_text: str = "") -> Gauge:
        with self._lock:
            metric = self._metrics.setdefault(name, Gauge(name, help_text))
        assert isinstance(metric, Gauge), f"{name} is registered as another kind"
        return metric

    def histogram(self, name: str, help_text: str = "") -> Histogram:
        with self._lock:
            metric = self._metrics.setdefault(name, Histogram(name, help_text))
        assert isinstance(metric, Histogram), f"{name} is registered as another kind"
        return metric

    def render(self) -> str:
        """All metrics in the Prometheus text exposition format."""
        lines: list[str] = []
        for metric in self._metrics.values():
            lines += metric.render()
        return "\n".join(lines) + "\n"


registry = MetricsRegistry()
