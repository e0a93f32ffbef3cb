"""deploy_metrics: the textfile node_exporter reads and the event line of each cutover, written
for real into a temporary directory."""

from __future__ import annotations

import dataclasses
import json
import re
import stat
from pathlib import Path

import pytest
from ansible_collections.beamops.release.plugins.module_utils import deploy_metrics as dm

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
