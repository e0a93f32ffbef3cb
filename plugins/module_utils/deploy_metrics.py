# Copyright: contributors to beamops.release
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What every cutover (a deploy, its switch back, a rollback) leaves behind on its host, for
the monitoring an operator already runs:

    <metrics_dir>/beamops_<app>.prom              node_exporter's textfile collector format,
                                                  replaced atomically (0644)
    <metrics_dir>/.beamops_<app>.counters.json    the counters kept between runs (root, 0600)
    <events_log>                                  one JSON line per cutover, appended (0640)

Written by the cutover itself, on the host, once it has its outcome: the same code path for
the deploy playbook, rollback.yml and the on-host rollback command, and no extra round trip.
Nothing here may fail a cutover: the caller turns an OSError into a warning.

Pure standard library, Python 3.8+.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from typing import Any, Dict, List, Mapping, Optional

# A cutover's result as the metrics and events name it.
RESULTS = ("success", "gate_failed", "switched_back", "failed")
EVENTS = ("deploy", "rollback")


@dataclasses.dataclass
class Cutover:
    """One finished cutover, as the metrics and the event line need it."""

    app: str
    host: str
    event: str  # deploy or rollback
    version: str
    slot: str
    from_version: str
    from_slot: str
    result: str  # one of RESULTS
    stage: str  # where it ended (start, switch, watch, record, done)
    started_at: float  # wall clock, seconds
    ended_at: float
    timings: Mapping[str, float]
    msg: str
    run_id: Optional[str] = None
    holder: Optional[str] = None  # who ran it (the deploy lock's holder)


@dataclasses.dataclass
class Serving:
    """What the host serves after the cutover, and whether its state and proxy agree."""

    version: Optional[str]
    slot: Optional[str]
    routed_slot: Optional[str]  # what the proxy's own files say; None when unknown

    def drift(self) -> bool:
        return self.routed_slot is not None and self.routed_slot != self.slot


def result_of(ok: bool, switched_back: bool, stage: str) -> str:
    """success; gate_failed (the new slot never got ready: no traffic moved); switched_back
    (it failed after the switch and traffic went back); failed (anything else)."""
    if ok:
        return "success"
    if switched_back:
        return "switched_back"
    return "gate_failed" if stage == "start" else "failed"


def textfile_path(metrics_dir: str, app: str) -> str:
    return os.path.join(metrics_dir, f"beamops_{app}.prom")


def counters_path(metrics_dir: str, app: str) -> str:
    return os.path.join(metrics_dir, f".beamops_{app}.counters.json")


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(**pairs: str) -> str:
    return "{" + ",".join(f'{key}="{_label(value)}"' for key, value in pairs.items()) + "}"


def _metric(lines: List[str], name: str, kind: str, text: str) -> None:
    lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]


def render(cutover: Cutover, serving: Serving, counts: Mapping[str, int]) -> str:
    """The textfile: what serves, the last cutover, and every cutover counted by result."""
    app = cutover.app
    lines: List[str] = []
    _metric(lines, "beamops_release_info", "gauge", "The release this host serves (value 1).")
    if serving.version and serving.slot:
        lines.append(
            f"beamops_release_info{_labels(app=app, version=serving.version, slot=serving.slot)} 1"
        )
    for name, help_text, value in (
        ("beamops_deploy_last_start_timestamp_seconds", "When the last cutover began.",
         cutover.started_at),
        ("beamops_deploy_last_end_timestamp_seconds", "When the last cutover ended.",
         cutover.ended_at),
        ("beamops_deploy_last_gate_seconds", "How long the last cutover's readiness gate took.",
         cutover.timings.get("start", 0.0)),
        ("beamops_deploy_last_watch_seconds", "How long the last cutover watched after the switch.",
         cutover.timings.get("watch", 0.0)),
        ("beamops_deploy_state_proxy_drift",
         "1 when the state file and the proxy name different live slots.",
         1 if serving.drift() else 0),
    ):  # fmt: skip
        _metric(lines, name, "gauge", help_text)
        lines.append(f"{name}{_labels(app=app)} {_number(value)}")
    _metric(lines, "beamops_deploy_last_result", "gauge",
            "The last cutover's event and result (value 1).")  # fmt: skip
    lines.append(
        f"beamops_deploy_last_result{_labels(app=app, event=cutover.event, result=cutover.result)}"
        " 1"
    )
    for event in EVENTS:
        name = f"beamops_{event}s_total"
        _metric(lines, name, "counter", f"Cutovers of kind {event} on this host, by result.")
        for result in RESULTS:
            count = counts.get(f"{event}:{result}", 0)
            lines.append(f"{name}{_labels(app=app, result=result)} {count}")
    return "\n".join(lines) + "\n"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.3f}"


def event_line(cutover: Cutover, serving: Serving) -> str:
    """One JSON line: who, what, from which, the result, how long each step took."""
    record: Dict[str, Any] = {
        "at": cutover.ended_at,
        "app": cutover.app,
        "host": cutover.host,
        "event": cutover.event,
        "result": cutover.result,
        "version": cutover.version,
        "slot": cutover.slot,
        "from_version": cutover.from_version,
        "from_slot": cutover.from_slot,
        "serving": serving.version,
        "stage": cutover.stage,
        "seconds": round(cutover.ended_at - cutover.started_at, 3),
        "timings": dict(cutover.timings),
        "run_id": cutover.run_id,
        "who": cutover.holder,
        "msg": cutover.msg[:500],
    }
    return json.dumps(record, sort_keys=True) + "\n"


def read_counts(path: str) -> Dict[str, int]:
    try:
        with open(path, encoding="utf-8") as handle:
            raw = json.load(handle)
    except (OSError, ValueError):
        return {}  # first run, or a damaged file: counting starts again (a counter reset)
    if not isinstance(raw, dict):
        return {}
    return {str(k): int(v) for k, v in raw.items() if isinstance(v, int) and v >= 0}


def _replace(path: str, text: str, mode: int) -> None:
    """Write beside, then rename: node_exporter never reads half a file."""
    directory = os.path.dirname(path) or "."
    fd, temp = tempfile.mkstemp(prefix=".beamops-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            os.fchmod(handle.fileno(), mode)
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        if os.path.exists(temp):
            os.unlink(temp)
        raise


def publish(
    cutover: Cutover, serving: Serving, metrics_dir: str = "", events_log: str = ""
) -> List[str]:
    """Count the cutover, rewrite the textfile, append the event; return what was written."""
    written: List[str] = []
    if metrics_dir:
        os.makedirs(metrics_dir, mode=0o755, exist_ok=True)
        counts_file = counters_path(metrics_dir, cutover.app)
        counts = read_counts(counts_file)
        key = f"{cutover.event}:{cutover.result}"
        counts[key] = counts.get(key, 0) + 1
        _replace(counts_file, json.dumps(counts, sort_keys=True) + "\n", 0o600)
        textfile = textfile_path(metrics_dir, cutover.app)
        _replace(textfile, render(cutover, serving, counts), 0o644)
        written.append(textfile)
    if events_log:
        os.makedirs(os.path.dirname(events_log) or ".", mode=0o750, exist_ok=True)
        fd = os.open(events_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        with os.fdopen(fd, "a", encoding="utf-8") as handle:
            handle.write(event_line(cutover, serving))
        written.append(events_log)
    return written
