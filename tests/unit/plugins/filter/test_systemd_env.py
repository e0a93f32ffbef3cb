"""systemd_env renders what systemd reads back exactly; proven against systemd's own parser."""

from __future__ import annotations

import pytest
from ansible.errors import AnsibleFilterError
from ansible_collections.beamops.release.plugins.filter.systemd_env import systemd_env

# systemd's own parser reads these back exactly: proven on a real host by the deploy
# scenario (molecule/deploy/tests/test_deploy.py::test_systemd_reads_back_the_environment).


def test_quotes_backslashes_and_dollars_are_escaped() -> None:
    text = systemd_env({"V": 'say "hi" C:\\x $HOME'})
    assert text == 'V="say \\"hi\\" C:\\\\x \\$HOME"\n'


def test_lines_are_sorted_quoted_and_end_with_newline() -> None:
    text = systemd_env({"B": "2", "A": 1})
    assert text == 'A="1"\nB="2"\n'


def test_booleans_render_as_true_false() -> None:
    assert systemd_env({"ON": True, "OFF": False}) == 'OFF="false"\nON="true"\n'


@pytest.mark.parametrize("name", ["1ABC", "WITH-DASH", "has space", "", "A.B"])
def test_invalid_names_are_refused_naming_the_source(name: str) -> None:
    with pytest.raises(AnsibleFilterError, match=r"beamops_env.*not a valid environment variable"):
        systemd_env({name: "x"}, "beamops_env")


@pytest.mark.parametrize("value", ["line1\nline2", "nul\0byte", ["a"], {"a": 1}, None])
def test_unrepresentable_values_are_refused(value: object) -> None:
    with pytest.raises(AnsibleFilterError, match=r"beamops_secret_env: the value of KEY|KEY must"):
        systemd_env({"KEY": value}, "beamops_secret_env")


def test_a_non_mapping_is_refused() -> None:
    with pytest.raises(AnsibleFilterError, match="must be a mapping"):
        systemd_env(["A=1"], "beamops_env")  # type: ignore[arg-type]
