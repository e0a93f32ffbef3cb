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

import base64
import dataclasses
import datetime
import http.client
import json
import os
import tempfile
import threading
import time
import urllib.parse
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

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


def lock_path(metrics_dir: str, app: str) -> str:
    return os.path.join(metrics_dir, f"beamops_{app}_lock.prom")


def parse_lock_since(text: str) -> Optional[float]:
    """The lock's `since` (ISO-8601 UTC, `Z`) as a Unix timestamp; None when unreadable."""
    try:
        return (
            datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ")
            .replace(tzinfo=datetime.timezone.utc)
            .timestamp()
        )
    except (TypeError, ValueError):
        return None


def render_lock(app: str, lock: Optional[Mapping[str, Any]]) -> str:
    """Whether the deploy lock is held, and since when and by whom (for "held too long")."""
    lines: List[str] = []
    _metric(lines, "beamops_deploy_lock_held", "gauge",
            "1 while a run or an operator holds the host's deploy lock.")  # fmt: skip
    lines.append(f"beamops_deploy_lock_held{_labels(app=app)} {1 if lock else 0}")
    since = parse_lock_since(str(lock.get("since", ""))) if lock else None
    if lock and since is not None:
        _metric(lines, "beamops_deploy_lock_since_timestamp_seconds", "gauge",
                "When the held deploy lock was taken; absent when none is held.")  # fmt: skip
        labels = _labels(
            app=app, holder=str(lock.get("holder", "")), purpose=str(lock.get("purpose", ""))
        )
        lines.append(f"beamops_deploy_lock_since_timestamp_seconds{labels} {_number(since)}")
    return "\n".join(lines) + "\n"


def publish_lock(metrics_dir: str, app: str, lock: Optional[Mapping[str, Any]]) -> str:
    """Replace <metrics_dir>/beamops_<app>_lock.prom atomically; return its path."""
    os.makedirs(metrics_dir, mode=0o755, exist_ok=True)
    path = lock_path(metrics_dir, app)
    _replace(path, render_lock(app, lock), 0o644)
    return path


# --------------------------------------------------------------------------- webhooks
# Kept apart from the cutover settings (0644): a webhook's URL or headers often hold a token.
WEBHOOKS_FILE_NAME = "webhooks.json"
WEBHOOK_BACKOFF_SECONDS = 0.5


@dataclasses.dataclass
class Webhook:
    """One generic JSON POST per cutover: Slack's incoming webhooks read its `text`, Grafana's
    annotation API its `time`, `text` and `tags`; every event field is there too."""

    url: str
    timeout: float = 5.0  # for all attempts together: the most it may delay the run
    retries: int = 2
    headers: Dict[str, str] = dataclasses.field(default_factory=dict)

    def where(self) -> str:
        """The URL without its path and query, which may hold a token."""
        parsed = urllib.parse.urlsplit(self.url)
        return f"{parsed.scheme}://{parsed.netloc.rsplit('@', 1)[-1]}"


def webhooks_from(raw: object) -> List[Webhook]:
    if not isinstance(raw, list):
        raise ValueError(f"webhooks must be a list, got {type(raw).__name__}")
    hooks = []
    for index, entry in enumerate(raw):
        if not isinstance(entry, dict) or not isinstance(entry.get("url"), str):
            raise ValueError(f"webhooks[{index}] must be a mapping with a url")
        if not entry["url"].startswith(("http://", "https://")):
            raise ValueError(f"webhooks[{index}].url must start with http:// or https://")
        hooks.append(
            Webhook(
                url=entry["url"],
                timeout=float(entry.get("timeout", 5.0)),
                retries=int(entry.get("retries", 2)),
                headers={str(k): str(v) for k, v in (entry.get("headers") or {}).items()},
            )
        )
    return hooks


def save_webhooks(config_dir: str, hooks: Sequence[Webhook]) -> bool:
    """<config_dir>/webhooks.json (root, 0600), removed when there are none; True if changed."""
    path = os.path.join(config_dir, WEBHOOKS_FILE_NAME)
    if not hooks:
        if os.path.exists(path):
            os.unlink(path)
            return True
        return False
    text = json.dumps([dataclasses.asdict(h) for h in hooks], sort_keys=True) + "\n"
    try:
        with open(path, encoding="utf-8") as handle:
            if handle.read() == text:
                return False
    except OSError:
        pass
    os.makedirs(config_dir, mode=0o755, exist_ok=True)
    _replace(path, text, 0o600)
    return True


def load_webhooks(config_dir: str) -> List[Webhook]:
    path = os.path.join(config_dir, WEBHOOKS_FILE_NAME)
    try:
        with open(path, encoding="utf-8") as handle:
            return webhooks_from(json.load(handle))
    except FileNotFoundError:
        return []


def webhook_body(cutover: Cutover, serving: Serving) -> bytes:
    record = json.loads(event_line(cutover, serving))
    record["text"] = (
        f"{cutover.app} on {cutover.host or 'a host'}: {cutover.event} of {cutover.version} "
        f"(from {cutover.from_version or 'nothing'}) {cutover.result}; serving "
        f"{serving.version or 'nothing'}"
    )
    record["time"] = int(cutover.ended_at * 1000)
    record["tags"] = ["beamops", cutover.app, cutover.event, cutover.result]
    return json.dumps(record, sort_keys=True).encode("utf-8")


Post = Callable[[str, bytes, Dict[str, str], float], int]


def _post(url: str, body: bytes, headers: Dict[str, str], timeout: float) -> int:
    """One POST with http.client (the module_utils also run outside Ansible, on the host's
    rollback command, so not Ansible's open_url); the answer's status."""
    parts = urllib.parse.urlsplit(url)
    kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    host = parts.hostname or ""
    connection = kind(host, parts.port, timeout=timeout)
    try:
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        if parts.username is not None:
            credentials = f"{parts.username}:{parts.password or ''}".encode()
            headers = {
                "Authorization": "Basic " + base64.b64encode(credentials).decode(),
                **headers,
            }
        connection.request("POST", path, body=body, headers=headers)
        return int(connection.getresponse().status)
    finally:
        connection.close()


def _deliver(hook: Webhook, body: bytes, post: Post, outcome: List[str]) -> None:
    """Attempts until one answers 2xx or the hook's time is spent; the last problem, if any."""
    deadline = time.monotonic() + hook.timeout
    problem = "no attempt"
    for attempt in range(hook.retries + 1):
        left = deadline - time.monotonic()
        if left <= 0:
            break
        headers = {"Content-Type": "application/json", **hook.headers}
        try:
            status = post(hook.url, body, headers, left)
        except (OSError, ValueError, http.client.HTTPException) as exc:
            problem = str(exc) or type(exc).__name__
        else:
            if 200 <= status < 300:
                outcome.append("")
                return
            problem = f"HTTP {status}"
        if attempt < hook.retries:
            time.sleep(min(WEBHOOK_BACKOFF_SECONDS, max(0.0, deadline - time.monotonic())))
    outcome.append(problem)


def notify(
    hooks: Sequence[Webhook], cutover: Cutover, serving: Serving, post: Post = _post
) -> List[str]:
    """POST the event to every hook at once; each gets at most its own timeout. Returns a
    warning per hook that failed or did not answer in time (never its URL's path)."""
    body = webhook_body(cutover, serving)
    runs = []
    for hook in hooks:
        outcome: List[str] = []
        thread = threading.Thread(target=_deliver, args=(hook, body, post, outcome), daemon=True)
        thread.start()
        runs.append((hook, thread, outcome, time.monotonic() + hook.timeout))
    warnings = []
    for hook, thread, outcome, deadline in runs:
        # A hook that hangs is left behind: its thread dies with this process.
        thread.join(max(0.0, deadline - time.monotonic()) + 0.05)
        if thread.is_alive() or not outcome:
            warnings.append(
                f"webhook {hook.where()} did not answer within {hook.timeout:g} s; "
                "the cutover did not wait for it"
            )
        elif outcome[0]:
            warnings.append(
                f"webhook {hook.where()} failed after {hook.retries + 1} attempt(s) within "
                f"{hook.timeout:g} s: {outcome[0]}"
            )
    return warnings
