"""A real Prometheus server's HTTP API, as the monitoring tests read it."""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request
from typing import Any, Callable, Dict, List, Optional, TypeVar

T = TypeVar("T")
Series = Dict[str, Any]  # {"metric": {labels}, "value": [t, "v"]} or "values": [[t, "v"], ...]


class Prometheus:
    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")

    def _get(self, path: str, **params: Any) -> Any:
        query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
        with urllib.request.urlopen(f"{self.base_url}{path}?{query}", timeout=10) as answer:
            body = json.load(answer)
        assert body.get("status") == "success", body
        return body["data"]

    def query(self, expr: str, at: Optional[float] = None) -> List[Series]:
        data = self._get("/api/v1/query", query=expr, time=at)
        assert data["resultType"] == "vector", data
        return list(data["result"])

    def query_range(self, expr: str, start: float, end: float, step: float) -> List[Series]:
        data = self._get("/api/v1/query_range", query=expr, start=start, end=end, step=step)
        return list(data["result"])

    def values(self, expr: str) -> Dict[str, float]:
        """{host label (or the labels as text): value} of an instant query."""
        return {
            str(s["metric"].get("host", s["metric"])): float(s["value"][1])
            for s in self.query(expr)
        }

    def firing(self, alertname: str) -> List[Dict[str, str]]:
        alerts = self._get("/api/v1/alerts")["alerts"]
        return [
            dict(a["labels"])
            for a in alerts
            if a["labels"].get("alertname") == alertname and a["state"] == "firing"
        ]

    def targets(self) -> List[Dict[str, Any]]:
        return list(self._get("/api/v1/targets", state="active")["activeTargets"])


def wait_for(what: str, probe: Callable[[], Optional[T]], seconds: float, step: float = 0.25) -> T:
    """Poll until `probe` returns something truthy; fail naming `what` and the last answer."""
    deadline = time.monotonic() + seconds
    last: Optional[T] = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(step)
    raise AssertionError(f"{what}: not within {seconds} s (last: {last!r})")
