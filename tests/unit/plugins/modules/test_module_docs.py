"""The new modules' documentation renders with ansible-doc and matches their argument specs."""

from __future__ import annotations

from ansible_collections.beamops.release.plugins.modules import (
    proxy_setup,
    release_unpack,
    slot_config,
    systemd_units,
)
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


def test_slot_config_documentation_renders_and_matches_the_argument_spec() -> None:
    document = ansible_doc("slot_config")
    options = document["doc"]["options"]
    assert set(options) == set(slot_config.ARGUMENT_SPEC)
    for name, spec in slot_config.ARGUMENT_SPEC.items():
        assert options[name]["type"] == spec["type"], name
        assert options[name].get("default") == spec.get("default"), name
    assert set(document["return"]) == {"changed_files"}


def test_release_unpack_documentation_renders_and_matches_the_argument_spec() -> None:
    document = ansible_doc("release_unpack")
    options = document["doc"]["options"]
    assert set(options) == set(release_unpack.ARGUMENT_SPEC)
    assert "required" in " ".join(options["src"]["description"])  # the action plugin checks it
    assert set(document["return"]) == {"installed", "transferred", "msg", "epmd"}


def test_systemd_units_and_proxy_setup_documentation_matches_the_argument_spec() -> None:
    for name, spec in (
        ("systemd_units", systemd_units.ARGUMENT_SPEC),
        ("proxy_setup", proxy_setup.ARGUMENT_SPEC),
    ):
        options = ansible_doc(name)["doc"]["options"]
        assert set(options) == set(spec), name
        for option, wanted in spec.items():
            assert options[option]["type"] == wanted["type"], (name, option)
            assert options[option].get("default") == wanted.get("default"), (name, option)
