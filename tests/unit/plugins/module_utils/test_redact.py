"""redact: a release's journal lines lose the slot's secrets and URL passwords before they
reach the controller or the state file."""

from __future__ import annotations

from pathlib import Path

from ansible_collections.beamops.release.plugins.module_utils import environment_file
from ansible_collections.beamops.release.plugins.module_utils import redact as rd

SECRETS = {
    "SECRET_KEY_BASE": 'sk-"quoted"-$dollar\\back-0123456789',
    "DATABASE_PASSWORD": "hunter2-hunter2",
    "SHORT": "abc",
}


def test_the_secrets_file_s_values_and_url_passwords_are_redacted(tmp_path: Path) -> None:
    secrets_file = tmp_path / "blue.secrets.env"
    secrets_file.write_text(environment_file.render(SECRETS))
    assert rd.secrets_in_env_file(str(secrets_file)) == SECRETS
    lines = [
        f"FATAL: bad SECRET_KEY_BASE {SECRETS['SECRET_KEY_BASE']}",
        "cannot connect to postgres://app:hunter2-hunter2@db:5432/app",
        "redis://:s3cr3t-token@cache:6379 refused",
        "abc is too short to be redacted; so is an ordinary word",
    ]
    out = rd.redact_lines(lines, str(secrets_file))
    assert out[0] == "FATAL: bad SECRET_KEY_BASE [redacted SECRET_KEY_BASE]"
    assert out[1] == "cannot connect to postgres://app:[redacted DATABASE_PASSWORD]@db:5432/app"
    assert out[2] == "redis://:***@cache:6379 refused"
    assert out[3] == lines[3]
    assert not any("hunter2" in line or "0123456789" in line for line in out)


def test_without_a_readable_secrets_file_only_url_passwords_go(tmp_path: Path) -> None:
    assert rd.redact_lines(["https://u:p4ss@h/x"], str(tmp_path / "missing")) == [
        "https://u:***@h/x"
    ]
