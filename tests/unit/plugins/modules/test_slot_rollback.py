"""The slot_rollback module's documentation renders and matches its argument spec."""

from __future__ import annotations

from ansible_collections.beamops.release.plugins.modules import slot_rollback as module

from tests.unit.plugins.modules.test_slot_cutover import ansible_doc


def test_documentation_renders_and_matches_the_argument_spec() -> None:
    document = ansible_doc("slot_rollback")
    options = document["doc"]["options"]
    assert set(options) == set(module.ARGUMENT_SPEC)
    for name, spec in module.ARGUMENT_SPEC.items():
        assert options[name]["type"] == spec["type"], name
        assert options[name].get("default") == spec.get("default"), name
        assert options[name].get("required", False) == spec.get("required", False), name
    assert {"plan", "result", "msg", "stage", "switched_back", "timings"} == set(document["return"])
