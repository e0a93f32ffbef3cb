"""The slot_cutover module's contract: documentation that ansible-doc renders and that matches
the argument spec, and the split of its flat parameters into settings and request."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict

from ansible_collections.beamops.release.plugins.module_utils import cutover as co
from ansible_collections.beamops.release.plugins.modules import slot_cutover as module

REPO = Path(__file__).resolve().parents[4]
BIN = Path(sys.executable).parent


def ansible_doc(name: str = "slot_cutover") -> Dict[str, Any]:
    env = {**os.environ, "ANSIBLE_COLLECTIONS_PATH": str(REPO / "build" / "collections")}
    found = subprocess.run(
        [str(BIN / "ansible-doc"), "--json", f"beamops.release.{name}"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return dict(json.loads(found.stdout)[f"beamops.release.{name}"])


def test_documentation_renders_and_matches_the_argument_spec() -> None:
    document = ansible_doc()
    options = document["doc"]["options"]
    assert set(options) == set(module.ARGUMENT_SPEC)
    for name, spec in module.ARGUMENT_SPEC.items():
        assert options[name]["type"] == spec["type"], name
        assert options[name].get("default") == spec.get("default"), name
        assert options[name].get("required", False) == spec.get("required", False), name
        assert options[name].get("choices") == spec.get("choices"), name
    outcome = {f.name for f in dataclasses.fields(co.Outcome)} - {"warnings", "changed"}
    assert outcome | {"slot", "from_slot", "from_version", "tools_changed"} == set(
        document["return"]
    )


def test_every_option_is_either_a_setting_or_part_of_the_request() -> None:
    # unit_dir is the host's (/etc/systemd/system); webhooks are kept apart (secrets).
    settings = {f.name for f in dataclasses.fields(co.Settings)} - {"unit_dir"}
    request = {f.name for f in dataclasses.fields(co.Request)}
    assert set(module.ARGUMENT_SPEC) - {"webhooks"} == settings | request
    assert set(module.REQUEST_OPTIONS) == request


def test_split_params_gives_settings_and_request() -> None:
    params = {name: spec.get("default") for name, spec in module.ARGUMENT_SPEC.items()}
    params.update(
        app="demo",
        slot="green",
        version="1.0.0",
        base_dir="/opt/demo",
        state_path="/opt/demo/release-state.json",
        config_dir="/etc/demo",
        slot_ports={"blue": 4001, "green": "4002"},
        proxy="haproxy",
        proxy_port=80,
        haproxy_map_file="/etc/haproxy/demo-live.map",
    )
    raw, request = module.split_params(params)
    settings = co.settings_from_dict(raw)
    assert settings.slot_ports == {"blue": 4001, "green": 4002}
    assert settings.nginx_upstream_file == "" and settings.haproxy_map_file.endswith(".map")
    assert (request.slot, request.version, request.event) == ("green", "1.0.0", "deploy")
