"""The modules' documentation renders with ansible-doc and matches their argument specs."""

from __future__ import annotations

import pytest
from ansible_collections.beamops.release.plugins.action.release_artifact import ActionModule
from ansible_collections.beamops.release.plugins.modules import (
    proxy_setup,
    release_task,
    release_unpack,
    slot_config,
    slot_rollback,
    systemd_units,
)

from tests.unit.plugins.modules.test_slot_cutover import ansible_doc

MODULES = {
    "slot_rollback": (
        slot_rollback,
        {"plan", "lock", "result", "msg", "stage", "switched_back", "timings", "serving"},
    ),
    "slot_config": (slot_config, {"changed_files", "unit_active"}),
    "release_unpack": (
        release_unpack,
        {"installed", "transferred", "msg", "epmd", "account_created"},
    ),
    "systemd_units": (systemd_units, {"changed_units", "started", "outdated_instances"}),
    "proxy_setup": (proxy_setup, {"written", "actions"}),
    "release_task": (release_task, {"rc", "output", "seconds"}),
}


@pytest.mark.parametrize("name", sorted(MODULES))
def test_documentation_renders_and_matches_the_argument_spec(name: str) -> None:
    module, returns = MODULES[name]
    spec = getattr(module, "ARGUMENT_SPEC")  # noqa: B009 (each module defines it)
    document = ansible_doc(name)
    options = document["doc"]["options"]
    assert set(options) == set(spec)
    for option, wanted in spec.items():
        assert options[option]["type"] == wanted["type"], option
        assert options[option].get("default") == wanted.get("default"), option
        # release_unpack's src is required by its action plugin, not by the module.
        if not (name == "release_unpack" and option == "src"):
            assert options[option].get("required", False) == wanted.get("required", False)
    assert set(document["return"]) == returns


def test_release_unpack_says_its_src_is_required() -> None:
    options = ansible_doc("release_unpack")["doc"]["options"]
    assert "required" in " ".join(options["src"]["description"])


def test_release_artifact_documents_exactly_what_its_action_accepts() -> None:
    document = ansible_doc("release_artifact")
    assert set(document["doc"]["options"]) == set(ActionModule._VALID_ARGS)
    assert set(document["return"]) == {"path", "sha256", "downloaded", "members"}
