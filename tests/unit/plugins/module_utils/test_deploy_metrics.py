"""deploy_metrics: the textfile node_exporter reads and the event line of each cutover, written
for real into a temporary directory."""

from __future__ import annotations

import dataclasses
import json
import re
import stat
import time
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional

import pytest
from ansible_collections.beamops.release.plugins.module_utils import deploy_metrics as dm

from tests.tools.webhook_receiver import WebhookReceiver

CUTOVER = dm.Cutover(
    app="shop",
    host="bo1",
    event="deploy",
    version="0.2.0",
    slot="green",
    from_version="0.1.0",
    from_slot="blue",
    result="success",
    stage="done",
    started_at=1764500000.0,
    ended_at=1764500012.5,
    timings={"start": 1.25, "switch": 0.01, "watch": 5.0},
    msg="deploy of 0.2.0 to slot green ok",
    run_id="20261130T120000Z-1",
    holder="ops@controller",
)
SERVING = dm.Serving(version="0.2.0", slot="green", routed_slot="green")
# One sample line of the text exposition format: name, optional labels, a number.
SAMPLE = re.compile(r'[a-z_]+(\{([a-z_]+="[^"]*",?)*\})? -?[0-9.e+]+')


@pytest.mark.parametrize(
    ("ok", "switched_back", "stage", "expected"),
    [
        (True, False, "done", "success"),
        (False, False, "start", "gate_failed"),
        (False, True, "watch", "switched_back"),
        (False, False, "switch", "failed"),
    ],
)
def test_a_cutover_s_result_is_named_for_what_traffic_saw(
    ok: bool, switched_back: bool, stage: str, expected: str
) -> None:
    assert dm.result_of(ok, switched_back, stage) == expected


def test_every_line_of_the_textfile_is_a_help_type_or_a_sample(tmp_path: Path) -> None:
    text = dm.render(CUTOVER, SERVING, {"deploy:success": 3, "rollback:success": 1})
    for line in text.splitlines():
        assert line.startswith(("# HELP ", "# TYPE ")) or SAMPLE.fullmatch(line), line
    assert 'beamops_release_info{app="shop",version="0.2.0",slot="green"} 1' in text
    assert 'beamops_deploy_last_result{app="shop",event="deploy",result="success"} 1' in text
    assert 'beamops_deploys_total{app="shop",result="success"} 3' in text
    assert 'beamops_deploys_total{app="shop",result="switched_back"} 0' in text
    assert 'beamops_rollbacks_total{app="shop",result="success"} 1' in text
    assert 'beamops_deploy_last_gate_seconds{app="shop"} 1.250' in text
    assert 'beamops_deploy_last_start_timestamp_seconds{app="shop"} 1764500000' in text
    assert 'beamops_deploy_state_proxy_drift{app="shop"} 0' in text


def test_state_and_proxy_disagreeing_is_a_drift() -> None:
    drifted = dm.Serving(version="0.2.0", slot="green", routed_slot="blue")
    assert 'beamops_deploy_state_proxy_drift{app="shop"} 1' in dm.render(CUTOVER, drifted, {})


def test_publish_counts_each_cutover_and_appends_one_event_line(tmp_path: Path) -> None:
    metrics, events = tmp_path / "textfile", tmp_path / "log" / "shop-events.jsonl"
    dm.publish(CUTOVER, SERVING, str(metrics), str(events))
    failed = dataclasses.replace(CUTOVER, result="switched_back", stage="watch")
    written = dm.publish(failed, SERVING, str(metrics), str(events))
    textfile = metrics / "beamops_shop.prom"
    assert written == [str(textfile), str(events)]
    text = textfile.read_text()
    assert 'beamops_deploys_total{app="shop",result="success"} 1' in text
    assert 'beamops_deploys_total{app="shop",result="switched_back"} 1' in text
    assert 'result="switched_back"} 1\n' in text.split("beamops_deploy_last_result")[-1]
    assert stat.S_IMODE(textfile.stat().st_mode) == 0o644
    assert stat.S_IMODE((metrics / ".beamops_shop.counters.json").stat().st_mode) == 0o600
    assert stat.S_IMODE(events.stat().st_mode) == 0o640
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    assert [(e["event"], e["result"], e["from_version"]) for e in lines] == [
        ("deploy", "success", "0.1.0"),
        ("deploy", "switched_back", "0.1.0"),
    ]
    assert lines[0]["who"] == "ops@controller" and lines[0]["seconds"] == 12.5
    assert not list(metrics.glob(".beamops-*")), "a temporary file was left behind"


def test_a_damaged_counters_file_restarts_counting_instead_of_failing(tmp_path: Path) -> None:
    (tmp_path / ".beamops_shop.counters.json").write_text("{not json")
    dm.publish(CUTOVER, SERVING, str(tmp_path))
    assert json.loads((tmp_path / ".beamops_shop.counters.json").read_text()) == {
        "deploy:success": 1
    }


# ----------------------------------------------------------------- the lock


def test_the_lock_file_says_who_holds_it_and_since_when(tmp_path: Path) -> None:
    lock = {
        "holder": "ops@ctl",
        "purpose": "frozen for the incident",
        "since": "2026-11-30T12:00:00Z",
    }
    path = dm.publish_lock(str(tmp_path), "shop", lock)
    text = Path(path).read_text()
    assert 'beamops_deploy_lock_held{app="shop"} 1' in text
    assert (
        'beamops_deploy_lock_since_timestamp_seconds{app="shop",holder="ops@ctl",'
        'purpose="frozen for the incident"} 1796040000'
    ) in text
    assert stat.S_IMODE(Path(path).stat().st_mode) == 0o644
    dm.publish_lock(str(tmp_path), "shop", None)
    text = Path(path).read_text()
    assert 'beamops_deploy_lock_held{app="shop"} 0' in text
    assert "since_timestamp" not in text  # the series vanishes with the lock
    for line in text.splitlines():
        assert line.startswith("#") or SAMPLE.fullmatch(line), line


# ----------------------------------------------------------------- webhooks


class Receiver(WebhookReceiver):
    """On loopback, with a token in its URL's path."""

    def __init__(self, statuses: List[Optional[int]]) -> None:
        super().__init__(statuses)
        self.url = f"http://127.0.0.1:{self.port}/hooks/secret-token"


@pytest.fixture
def receiver_factory() -> Iterator[Callable[[List[Optional[int]]], Receiver]]:
    made: List[Receiver] = []

    def make(statuses: List[Optional[int]]) -> Receiver:
        made.append(Receiver(statuses))
        return made[-1]

    yield make
    for receiver in made:
        receiver.close()


def test_a_webhook_gets_the_event_as_slack_and_grafana_read_it(receiver_factory: Any) -> None:
    receiver = receiver_factory([200])
    hook = dm.Webhook(url=receiver.url, headers={"Authorization": "Bearer t0ken"})
    assert dm.notify([hook], CUTOVER, SERVING) == []
    (body,) = receiver.bodies
    assert body["text"] == "shop on bo1: deploy of 0.2.0 (from 0.1.0) success; serving 0.2.0"
    assert body["time"] == 1764500012500
    assert body["tags"] == ["beamops", "shop", "deploy", "success"]
    assert (body["version"], body["from_version"], body["who"]) == (
        "0.2.0",
        "0.1.0",
        "ops@controller",
    )
    assert receiver.headers[0]["Authorization"] == "Bearer t0ken"
    assert receiver.headers[0]["Content-Type"] == "application/json"


def test_a_failing_webhook_is_retried_then_reported_without_its_path(receiver_factory: Any) -> None:
    flaky = receiver_factory([500, 200])
    broken = receiver_factory([500, 502, 503])
    warnings = dm.notify(
        [dm.Webhook(url=flaky.url, retries=2), dm.Webhook(url=broken.url, retries=2)],
        CUTOVER,
        SERVING,
    )
    assert len(flaky.bodies) == 2 and len(broken.bodies) == 3
    (warning,) = warnings
    assert warning.startswith(f"webhook http://127.0.0.1:{broken.server.server_address[1]} failed")
    assert "after 3 attempt(s) within 5 s: HTTP 503" in warning
    assert "secret-token" not in warning


def test_a_hanging_webhook_delays_the_cutover_by_its_timeout_at_most(
    receiver_factory: Any,
) -> None:
    hanging = receiver_factory([None, None, None])
    quick = receiver_factory([200])
    began = time.monotonic()
    warnings = dm.notify(
        [dm.Webhook(url=hanging.url, timeout=1.0), dm.Webhook(url=quick.url, timeout=1.0)],
        CUTOVER,
        SERVING,
    )
    took = time.monotonic() - began
    assert took < 1.5, took  # both at once, each within its own second
    # Its thread may or may not have seen its socket time out by then: either way, one warning.
    (warning,) = warnings
    where = f"webhook http://127.0.0.1:{hanging.server.server_address[1]} "
    assert warning.startswith(where) and "within 1 s" in warning, warning
    assert "secret-token" not in warning
    assert len(quick.bodies) == 1


def test_an_unreachable_webhook_is_a_warning_naming_only_its_host() -> None:
    warnings = dm.notify(
        [dm.Webhook(url="http://user:pw@127.0.0.1:9/x?token=1", timeout=1.0, retries=1)],
        CUTOVER,
        SERVING,
    )
    (warning,) = warnings
    assert warning.startswith("webhook http://127.0.0.1:9 failed after 2 attempt(s)"), warning
    assert "token" not in warning and "pw" not in warning


def test_webhooks_are_kept_for_the_host_in_a_root_only_file(tmp_path: Path) -> None:
    hooks = dm.webhooks_from([{"url": "https://hooks.example/T0K3N", "timeout": 2}])
    assert dm.save_webhooks(str(tmp_path), hooks) is True
    assert dm.save_webhooks(str(tmp_path), hooks) is False
    path = tmp_path / dm.WEBHOOKS_FILE_NAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert dm.load_webhooks(str(tmp_path)) == hooks
    assert dm.save_webhooks(str(tmp_path), []) is True
    assert not path.exists() and dm.load_webhooks(str(tmp_path)) == []
    with pytest.raises(ValueError, match=r"webhooks\[0\]\.url must start with http"):
        dm.webhooks_from([{"url": "ftp://x"}])
