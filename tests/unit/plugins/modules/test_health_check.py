"""beamops.release.health_check run for real: `ansible localhost -m ...` against a scripted server.

Each test starts ansible as a subprocess with a private config and a collections path made
for the test run, so neither the project's ansible.cfg nor the build/ tree is needed.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Iterator, Optional, Tuple

import pytest

from tests.unit.standalone import load_standalone

from ...conftest import Reply, ScriptedServer
from ..module_utils.test_health_probe import PROBE_FILE, _interpreters

if TYPE_CHECKING:
    from ansible_collections.beamops.release.plugins.module_utils import health_probe as hp
else:
    hp = load_standalone(PROBE_FILE)

REPO = Path(__file__).resolve().parents[4]
MODULE_FILE = REPO / "plugins" / "modules" / "health_check.py"
MODULE = "beamops.release.health_check"
# `localhost | FAILED! => {...}`: the default callback's ad-hoc result, JSON after the arrow.
AD_HOC_RESULT = re.compile(
    r"^localhost \| (?P<state>[A-Z]+!?) => (?P<json>\{.*\})\s*\Z", re.DOTALL | re.MULTILINE
)


def _ansible_tool(name: str) -> str:
    beside_python = Path(sys.executable).with_name(name)
    found = str(beside_python) if beside_python.exists() else shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed next to {sys.executable} nor on PATH")
    return found


@dataclasses.dataclass
class AnsibleRun:
    env: Dict[str, str]

    def module(
        self,
        args: Dict[str, Any],
        *,
        check: bool = False,
        interpreter: str = sys.executable,
    ) -> Tuple[int, str, Dict[str, Any], str]:
        """Run the module once; return (exit code, ad-hoc state, result, all output)."""
        command = [
            _ansible_tool("ansible"),
            "localhost",
            "-i",
            "localhost,",
            "-c",
            "local",
            "-e",
            f"ansible_python_interpreter={interpreter}",
            "-m",
            MODULE,
            "-a",
            json.dumps(args),
        ]
        if check:
            command.append("--check")
        done = subprocess.run(
            command, env=self.env, capture_output=True, text=True, timeout=60, check=False
        )
        match = AD_HOC_RESULT.search(done.stdout)
        assert match, f"unexpected ansible output:\n{done.stdout}\n{done.stderr}"
        return done.returncode, match["state"], json.loads(match["json"]), done.stdout + done.stderr

    def doc(self) -> Dict[str, Any]:
        done = subprocess.run(
            [_ansible_tool("ansible-doc"), "--json", MODULE],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        document: Dict[str, Any] = json.loads(done.stdout)[MODULE]
        return document


@pytest.fixture(scope="module")
def ansible(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AnsibleRun]:
    root = tmp_path_factory.mktemp("ansible")
    collection = root / "collections" / "ansible_collections" / "beamops" / "release"
    collection.parent.mkdir(parents=True)
    collection.symlink_to(REPO, target_is_directory=True)
    config = root / "ansible.cfg"
    config.write_text("[defaults]\n")
    (root / "tmp").mkdir()
    env = dict(os.environ)
    env.update(
        ANSIBLE_CONFIG=str(config),
        ANSIBLE_COLLECTIONS_PATH=str(root / "collections"),
        ANSIBLE_LOCAL_TEMP=str(root / "tmp"),
        ANSIBLE_REMOTE_TEMP=str(root / "tmp"),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_FORCE_COLOR="0",
    )
    yield AnsibleRun(env)


@pytest.mark.parametrize("interpreter", _interpreters())
def test_success(ansible: AnsibleRun, http_server: ScriptedServer, interpreter: str) -> None:
    url = http_server.script(
        "/health/ready",
        [
            Reply(503, '{"status":"starting"}'),
            Reply(200, '{"status":"ready","checks":{"db":true}}'),
        ],
    )
    args = {
        "url": url,  # the alias of urls, given a single string
        "json_fields": {"status": "ready", "checks.db": True},
        "interval": 0.05,
        "headers": {"X-Attempt-Budget": 5},
    }

    rc, state, result, _unused = ansible.module(args, interpreter=interpreter)

    assert (rc, state) == (0, "SUCCESS")
    assert result["changed"] is False
    assert (result["passed"], result["probed"], result["reason"]) == (True, True, "healthy")
    assert (result["attempts"], result["consecutive_successes"]) == (2, 1)
    assert result["answers"] == [
        {
            "url": url,
            "status": 200,
            "body": '{"status":"ready","checks":{"db":true}}',
            "error": None,
            "passed": True,
            "failure": None,
        }
    ]
    assert result["msg"].startswith(f"{url} healthy after 2 attempts in ")
    seen = http_server.requests_to("/health/ready")
    assert len(seen) == 2
    assert seen[0].headers["X-Attempt-Budget"] == "5"


def test_failure_message_and_result_fields(
    ansible: AnsibleRun, http_server: ScriptedServer, closed_port: int
) -> None:
    starting = http_server.script("/health/ready", [Reply(503, '{"status":"starting"}')])
    refused = f"http://127.0.0.1:{closed_port}/health/live"
    args = {"urls": [starting, refused], "interval": 0.05, "deadline": 0.6, "jitter": 0}

    rc, state, result, output = ansible.module(args)

    assert rc != 0 and state == "FAILED!"
    assert (result["changed"], result["passed"]) == (False, False)
    assert result["reason"] == "deadline"
    assert 0.6 <= result["elapsed"] < 1.0
    assert result["attempts"] == len(http_server.requests_to("/health/ready")) >= 3
    assert [answer["status"] for answer in result["answers"]] == [503, None]
    assert result["answers"][1]["error"] == "connection refused"
    assert re.fullmatch(
        re.escape(f"{starting}, {refused} (2 of 2 URLs) not healthy after ")
        + r"\d+ attempts in 0\.\ds \(deadline\): "
        + re.escape(f'{starting}: last answer 503 {{"status":"starting"}}; ')
        + re.escape(f"{refused}: last error: connection refused"),
        result["msg"],
    ), result["msg"]
    assert f"Module failed: {result['msg']}" in output


def test_check_mode_contacts_nothing(ansible: AnsibleRun, http_server: ScriptedServer) -> None:
    url = http_server.script("/health/ready", [Reply(200, "ok")])

    rc, state, result, _unused = ansible.module({"urls": [url]}, check=True)

    assert (rc, state) == (0, "SUCCESS")
    assert (result["changed"], result["probed"]) == (False, False)
    assert result["msg"].startswith(f"check mode: did not probe {url}")
    assert "passed" not in result
    assert http_server.seen == []


def test_check_mode_probes_when_asked(ansible: AnsibleRun, http_server: ScriptedServer) -> None:
    url = http_server.script("/health/ready", [Reply(200, "ok")])

    rc, _unused, result, _unused = ansible.module(
        {"urls": [url], "probe_in_check_mode": True}, check=True
    )

    assert rc == 0
    assert (result["changed"], result["probed"], result["passed"]) == (False, True, True)
    assert len(http_server.requests_to("/health/ready")) == 1


def test_invalid_parameters_are_named(ansible: AnsibleRun, http_server: ScriptedServer) -> None:
    url = http_server.script("/health/ready", [Reply(200, "ok")])
    args = {
        "urls": [url, "localhost:4000/health"],
        "jitter": 2,
        "success_threshold": 0,
        "deadline": 0,
    }

    rc, state, result, _unused = ansible.module(args)

    assert rc != 0 and state == "FAILED!"
    assert result["msg"] == (
        "urls: 'localhost:4000/health' is not an http:// or https:// URL; "
        "jitter must be >= 0 and <= 1, got 2.0; deadline must be > 0, got 0.0; "
        "success_threshold must be >= 1, got 0"
    )
    assert http_server.seen == []


def _argument_spec() -> Dict[str, Dict[str, Any]]:
    """ARGUMENT_SPEC read from the source: importing the module would need Ansible's loader."""
    tree = ast.parse(MODULE_FILE.read_text())
    for node in tree.body:
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", "") == "ARGUMENT_SPEC":
            assert node.value is not None
            spec: Dict[str, Dict[str, Any]] = ast.literal_eval(node.value)
            return spec
    raise AssertionError(f"no ARGUMENT_SPEC in {MODULE_FILE}")


def _option_summary(option: Dict[str, Any]) -> Tuple[Any, ...]:
    default: Optional[Any] = option.get("default")
    return (
        option.get("type"),
        option.get("elements"),
        bool(option.get("required", False)),
        sorted(option.get("aliases", [])),
        default,
    )


def test_documentation_matches_the_code(ansible: AnsibleRun) -> None:
    document = ansible.doc()
    doc = document["doc"]

    documented = {name: _option_summary(option) for name, option in doc["options"].items()}
    implemented = {name: _option_summary(option) for name, option in _argument_spec().items()}
    assert documented == implemented
    assert doc["version_added"] == "0.1.0"
    assert doc["attributes"]["check_mode"]["support"] == "full"
    assert doc["attributes"]["diff_mode"]["support"] == "none"

    returns = document["return"]
    # `exited` is the unit gate's (it watches $MAINPID); the module watches no process.
    probe_fields = {field.name for field in dataclasses.fields(hp.ProbeResult)} - {"exited"}
    answer_fields = {field.name for field in dataclasses.fields(hp.UrlAnswer)}
    assert set(returns) == probe_fields | {"msg", "probed"}
    assert set(returns["answers"]["contains"]) == answer_fields
