"""The runbooks' shape, checked without hosts: every page is in the index, every shell block
says where it runs, and every page is walked block by block by a scenario's test (which ends
with all_run(): a block left out fails that test)."""

from __future__ import annotations

import re

import pytest

from tests.tools import deploykit, runbooks

SCENARIO_TESTS = sorted((deploykit.REPO / "molecule").glob("*/tests/test_*.py"))


def test_the_issue_s_eight_pages_are_there() -> None:
    assert runbooks.pages() == [
        "add-remove-host.md",
        "cluster-split.md",
        "deploy-failed.md",
        "freeze-deploys.md",
        "recover-lost-state.md",
        "rollback-now.md",
        "rotate-secrets.md",
        "slot-unhealthy.md",
    ]


@pytest.mark.parametrize("page", runbooks.pages())
def test_each_page_is_indexed_and_walked_whole_by_a_scenario(page: str) -> None:
    index = (runbooks.DIRECTORY / "README.md").read_text()
    assert f"]({page})" in index, f"{page} is not in docs/runbooks/README.md"
    assert runbooks.read_blocks(page), f"{page} has no command"
    walked = [
        path
        for path in SCENARIO_TESTS
        if re.search(rf"(Runbook|book)\(\s*\"{re.escape(page)}\"", path.read_text())
    ]
    assert walked, f"no scenario test runs {page}"
    for path in walked:
        assert ".all_run()" in path.read_text(), f"{path} runs {page} but never checks all_run()"


def test_an_indented_block_is_read_as_written() -> None:
    text = "1. Step\n\n   ```sh\n   # on the host\n   echo one\n   ```\n"
    blocks = runbooks._BLOCK.findall(text)
    assert blocks == [("   ", "   # on the host\n   echo one\n")]
