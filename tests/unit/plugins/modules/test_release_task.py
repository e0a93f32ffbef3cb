"""release_task runs a real command (a stand-in for the node command) and returns what it said,
secrets redacted; a failure or a task out of time is its exit status and last lines."""

from __future__ import annotations

from pathlib import Path

from ansible_collections.beamops.release.plugins.modules import release_task as module

SECRET = "sk-R4nd0m-V4lu3-7Hq2kd9XpLw4Zr8"


def node_command(tmp_path: Path, body: str) -> str:
    script = tmp_path / "shop-node"
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(0o755)
    return str(script)


def params(command: str, **extra: object) -> dict:  # type: ignore[type-arg]
    return {
        "node_command": command,
        "slot": "green",
        "version": "1.4.0",
        "expression": "Shop.Release.migrate()",
        "timeout": 10.0,
        "secrets": {"SECRET_KEY_BASE": SECRET},
        "output_lines": 40,
        **extra,
    }


def test_the_node_command_gets_the_slot_the_release_and_the_expression(tmp_path: Path) -> None:
    command = node_command(tmp_path, 'printf "%s|" "$@"')
    argv = module.task_argv(params(command))
    assert argv == [
        command,
        "--slot",
        "green",
        "--release",
        "1.4.0",
        "eval",
        "Shop.Release.migrate()",
    ]
    rc, output, seconds = module.run_task(argv, 10)
    assert (rc, output) == (0, "--slot|green|--release|1.4.0|eval|Shop.Release.migrate()|")
    assert seconds < 5


def test_what_it_says_leaves_the_host_without_secrets(tmp_path: Path) -> None:
    command = node_command(
        tmp_path,
        f'echo "connecting to postgres://app:hunter22@db/shop"; echo "key {SECRET}" >&2; exit 3',
    )
    rc, output, _seconds = module.run_task([command], 10)
    lines = module.visible_lines(output, {"SECRET_KEY_BASE": SECRET}, 40)
    assert rc == 3
    assert lines == [
        "connecting to postgres://app:***@db/shop",
        "key [redacted SECRET_KEY_BASE]",
    ]
    assert module.visible_lines("a\n\nb\nc\n", {}, 2) == ["b", "c"]


def test_a_task_out_of_time_is_stopped_as_timeout_says(tmp_path: Path) -> None:
    command = node_command(tmp_path, "echo started; sleep 30")
    rc, output, seconds = module.run_task([command], 0.5)
    assert rc == 124 and seconds < 5
    assert "started" in output and "(stopped after 0.5 s)" in output
