"""A few process-local counters and gauges, rendered in the Prometheus text format.

Hand-written rather than prometheus_client: the service exposes a handful of series, and
the client's multi-process mode needs a shared directory and cleanup that a token service
should not depend on. With N workers, each process reports its own figures.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

__all__ = ["Metrics"]

_HELP = {
    "tokensvc_http_requests_total": ("counter", "HTTP requests by status code."),
    "tokensvc_tokens_issued_total": ("counter", "Tokens issued by kind."),
    "tokensvc_token_rejections_total": ("counter", "Rejected bearer tokens by reason class."),
    "tokensvc_secret_lookups_total": ("counter", "Just-in-time secret lookups by outcome."),
    "tokensvc_revocations_total": ("counter", "Revocations recorded by kind."),
    "tokensvc_open_streams": ("gauge", "Open event streams in this process."),
}


class Metrics:
    """Counters keyed by (name, label value); gauges read from callbacks."""

    def __init__(self) -> None:
        self._counters: dict[tuple[str, str, str], float] = defaultdict(float)
        self._gauges: dict[str, Callable[[], float]] = {}

    def inc(self, name: str, label: str = "", value: str = "", amount: float = 1.0) -> None:
        self._counters[(name, label, value)] += amount

    def gauge(self, name: str, read: Callable[[], float]) -> None:
        self._gauges[name] = read

    def render(self) -> str:
        lines: list[str] = []
        seen: set[str] = set()
        for (name, label, value), count in sorted(self._counters.items()):
            if name not in seen:
                seen.add(name)
                kind, text = _HELP.get(name, ("counter", name))
                lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
            labels = f'{{{label}="{_escape(value)}"}}' if label else ""
            lines.append(f"{name}{labels} {count:g}")
        for name, read in sorted(self._gauges.items()):
            kind, text = _HELP.get(name, ("gauge", name))
            lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}", f"{name} {read():g}"]
        return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
