"""The cluster's stories on three real hosts (bo1, bo3 behind nginx, bo2 behind HAProxy),
whose slots form one Erlang cluster over TLS distribution (group_vars/beamops_app/scenario.yml).

converge has deployed 0.1.0 to the three at once. The tests run in order; each leaves the
fleet as the next expects.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
import urllib.request
from pathlib import Path
from typing import Callable, Dict, List, Set

from tests.tools.fleet import COOKIE, HOSTS, SECRET_KEY_BASE, Fleet, address, deploykit
from tests.tools.runbooks import Runbook, extended_inventory, release_variables

APP = "sample_app"
NODE_COMMAND = f"{APP}-node"
DIST_PORTS = {"blue": 9101, "green": 9102}
SLOT_PORTS = {"blue": 4001, "green": 4002}
# eval boots a new VM with the slot's configuration: config/runtime.exs reads the secret from
# $CREDENTIALS_DIRECTORY (beamops_secrets_delivery credentials), as the slot does.
SECRET_LENGTH = "byte_size(Application.fetch_env!(:sample_app, :secret_key_base))"
EVAL_SECRET_LENGTH = f"{NODE_COMMAND} eval 'IO.puts({SECRET_LENGTH})'"
REFUSED = "running, but the connection failed: a different cookie or TLS settings"


def node(name: str, slot: str) -> str:
    return f"{APP}_{slot}@{address(name)}"


def live_slot(fleet: Fleet, name: str) -> str:
    return str(fleet.state(name)["active"]["slot"])


def idle_slot(fleet: Fleet, name: str) -> str:
    return "green" if live_slot(fleet, name) == "blue" else "blue"


def rpc(fleet: Fleet, name: str, expr: str, slot: str = "") -> str:
    """EXPR evaluated on a slot's node through the host's node command (the live one by default)."""
    chosen = f"--slot {slot} " if slot else ""
    return str(fleet.hosts[name].check_output(f"{NODE_COMMAND} {chosen}rpc '{expr}'"))


def connected(fleet: Fleet, name: str, slot: str = "") -> Set[str]:
    out = rpc(fleet, name, 'IO.puts(Enum.join(Node.list(), " "))', slot)
    return set(out.split())


def wait_for(what: str, check: Callable[[], bool], seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def test_the_three_live_nodes_form_one_cluster_over_tls(fleet: Fleet) -> None:
    live = {name: node(name, live_slot(fleet, name)) for name in HOSTS}
    for name in HOSTS:
        assert connected(fleet, name) == set(live.values()) - {live[name]}
        assert rpc(fleet, name, "IO.inspect(:init.get_argument(:proto_dist))") == (
            "{:ok, [['inet_tls']]}"
        )
        # Distribution listens on the host's address and the slot's pinned port alone, epmd
        # on that address and loopback: a firewall can allow exactly these.
        listening = fleet.hosts[name].check_output("ss -Hltn")
        port = DIST_PORTS[live_slot(fleet, name)]
        assert f"{address(name)}:{port} " in listening, listening
        assert f"0.0.0.0:{port} " not in listening and f"*:{port} " not in listening
        assert f"{address(name)}:4369 " in listening and "127.0.0.1:4369 " in listening
        ready = json.loads(fleet.hosts[name].check_output("curl -s http://127.0.0.1/health/ready"))
        assert ready["status"] == "ready" and ready["cluster"]["required"] == 2


def test_the_ip_allow_list_seals_the_slot_unit_to_1_0(fleet: Fleet) -> None:
    """Loopback and the three hosts only (beamops_ip_filter), on a unit that clusters."""
    addresses = sorted(f"{address(name)}/32" for name in HOSTS)
    for name in HOSTS:
        unit = f"{APP}@{live_slot(fleet, name)}.service"
        allowed = fleet.hosts[name].check_output(f"systemctl show -p IPAddressAllow --value {unit}")
        assert sorted(allowed.split()) == sorted([*addresses, "127.0.0.0/8", "::1/128"])
        deny = fleet.hosts[name].check_output(f"systemctl show -p IPAddressDeny --value {unit}")
        assert sorted(deny.split()) == ["0.0.0.0/0", "::/0"]
        assert fleet.exposure(name, unit) <= 1.0
        assert fleet.exposure(name, "beamops-epmd.service") <= 1.5


def sees_the_others(fleet: Fleet, name: str, slot: str, nodes: Set[str]) -> Callable[[], bool]:
    """A check: does the node of `slot` on `name` see exactly `nodes` but itself?"""
    return lambda: connected(fleet, name, slot) == nodes - {node(name, slot)}


def cluster_hosts(sample: Dict[str, object]) -> Set[str]:
    """The hosts (addresses) that have a node in the cluster as one readiness answer sees it."""
    nodes = [str(sample["node"]), *[str(n) for n in sample["connected_nodes"]]]  # type: ignore[attr-defined]
    return {n.split("@", 1)[1] for n in nodes}


class ClusterWatch(threading.Thread):
    """Asks every host's proxy for readiness (node and connected nodes) every 0.2 s."""

    def __init__(self, addresses: List[str]) -> None:
        super().__init__(daemon=True)
        self.addresses = addresses
        self.samples: List[Dict[str, object]] = []
        self.errors: List[str] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            for host in self.addresses:
                try:
                    with urllib.request.urlopen(f"http://{host}/health/ready", timeout=2) as r:
                        self.samples.append(json.loads(r.read()))
                except urllib.error.HTTPError as exc:  # a draining slot answers 503, with JSON
                    self.samples.append(json.loads(exc.read()))
                except OSError as exc:
                    self.errors.append(f"{host}: {exc}")
            time.sleep(0.2)


def test_a_rolling_deploy_under_load_keeps_a_node_on_every_host(fleet: Fleet) -> None:
    addresses = [address(name) for name in HOSTS]
    watch = ClusterWatch(addresses)
    watch.start()
    with fleet.under_load() as load:
        run = fleet.deploy("0.2.0", "-e", "beamops_serial=1")
    watch.stopping.set()
    watch.join()
    assert run.rc == 0, run.tail()
    assert load.failed() == 0 and load.requests() > 1000, load.results
    assert not watch.errors, watch.errors[:5]
    assert len(watch.samples) > 50
    lonely = [s for s in watch.samples if cluster_hosts(s) != set(addresses)]
    assert not lonely, lonely[:3]
    versions = {str(s["version"]) for s in watch.samples}
    assert versions == {"0.1.0", "0.2.0"}, versions
    for name in HOSTS:
        assert fleet.state(name)["active"]["version"] == "0.2.0"
    # The retired slots stopped and left: each live node sees exactly the two others.
    for name in HOSTS:
        fleet.wait_stopped(f"{APP}@{idle_slot(fleet, name)}")
    live = {node(name, live_slot(fleet, name)) for name in HOSTS}
    for name in HOSTS:
        seen = sees_the_others(fleet, name, live_slot(fleet, name), live)
        wait_for(f"{name} to see the two other live nodes", seen)


def test_six_slots_form_one_cluster_then_the_three_live_ones(fleet: Fleet) -> None:
    idle = {name: idle_slot(fleet, name) for name in HOSTS}
    for name in HOSTS:
        fleet.hosts[name].check_output(f"systemctl start {APP}@{idle[name]}")
    every = {node(name, slot) for name in HOSTS for slot in ("blue", "green")}
    for name in HOSTS:
        for slot in ("blue", "green"):
            seen = sees_the_others(fleet, name, slot, every)
            wait_for(f"{name} {slot} to see the five other nodes", seen)
    for name in HOSTS:
        fleet.hosts[name].check_output(f"systemctl stop {APP}@{idle[name]}")
        journal = fleet.hosts[name].check_output(
            f"journalctl -u {APP}@{idle[name]} -n 20 --no-pager -o cat"
        )
        assert "sample_app left the cluster" in journal
    live = {node(name, live_slot(fleet, name)) for name in HOSTS}
    for name in HOSTS:
        assert connected(fleet, name) == live - {node(name, live_slot(fleet, name))}


def test_a_node_without_tls_is_refused(fleet: Fleet) -> None:
    """The right cookie over plain TCP does not reach a TLS node."""
    host = fleet.hosts["bo1"]
    slot = live_slot(fleet, "bo1")
    host.check_output(
        "printf -- '-start_epmd false\\n' > /tmp/plain.vm.args && chmod 644 /tmp/plain.vm.args"
    )
    plain = host.run(
        f"runuser -u {APP} -- env HOME=/var/lib/{APP}/{slot} RELEASE_TMP=/tmp "
        "RELEASE_COOKIE=-beamops_cookie_in_home_erlang_cookie RELEASE_DISTRIBUTION=name "
        f"RELEASE_NODE={node('bo1', slot)} RELEASE_REMOTE_VM_ARGS=/tmp/plain.vm.args "
        f"/opt/{APP}/slots/{slot}/bin/{APP} rpc 'IO.puts(:reached)'"
    )
    assert plain.rc != 0 and "reached" not in plain.stdout
    assert "nodedown" in plain.stdout + plain.stderr


def test_a_node_with_a_wrong_cookie_is_refused_and_its_readiness_says_why(fleet: Fleet) -> None:
    name = "bo3"
    host = fleet.hosts[name]
    slot = idle_slot(fleet, name)
    cookie = f"/var/lib/{APP}/{slot}/.erlang.cookie"
    host.check_output(
        f"cp -p {cookie} /root/cookie.saved && chmod 600 {cookie} && "
        f"printf wrong-cookie-0123456789abcdef > {cookie} && chmod 400 {cookie}"
    )
    try:
        host.check_output(f"systemctl start --no-block {APP}@{slot}")
        url = f"http://127.0.0.1:{SLOT_PORTS[slot]}/health/ready"

        def refused_by_every_peer() -> bool:
            out = host.run(f"curl -s --max-time 2 {url}").stdout
            if not out.startswith("{"):
                return False
            answer = json.loads(out)
            others = {node(n, s) for n in HOSTS for s in ("blue", "green")} - {node(name, slot)}
            running = {node(n, live_slot(fleet, n)) for n in HOSTS}
            print(answer)
            return (
                answer["status"] == "joining"
                and answer["cluster"]["connected"] == 0
                and all(answer["cluster"]["missing"].get(n) == REFUSED for n in running)
                and set(answer["cluster"]["missing"]) == others
            )

        wait_for("the wrong-cookie node to say why it is alone", refused_by_every_peer)
        # The live nodes log the refusal and stay among themselves.
        peer = fleet.hosts["bo1"].check_output(
            f"journalctl -u {APP}@{live_slot(fleet, 'bo1')} --since -60s --no-pager -o cat"
        )
        assert f'Connection attempt from node :"{node(name, slot)}" rejected' in peer
        assert node(name, slot) not in connected(fleet, "bo1")
    finally:
        host.check_output(f"systemctl stop {APP}@{slot}; cp -p /root/cookie.saved {cookie}")


def test_the_node_command_reaches_the_live_node(fleet: Fleet) -> None:
    for name in HOSTS:
        host = fleet.hosts[name]
        live = node(name, live_slot(fleet, name))
        # A terminal (script), a line typed, then Ctrl+G q: the shell leaves, the node stays.
        typed = (
            "(sleep 2; echo 'IO.puts(\"on \" <> to_string(node()))'; "
            "sleep 2; printf '\\007'; sleep 0.5; echo q)"
        )
        shell = host.check_output(
            f"{typed} | timeout 30 script -qec '{NODE_COMMAND} remote' /dev/null"
        )
        assert f"on {live}" in shell and f"iex({live})1>" in shell
        # eval: a new VM with the slot's configuration and secrets, as a migration needs.
        length = host.check_output(EVAL_SECRET_LENGTH)
        assert length == str(len(SECRET_KEY_BASE))
    idle = idle_slot(fleet, "bo1")
    stopped = fleet.hosts["bo1"].run(f"{NODE_COMMAND} --slot {idle} rpc 'IO.puts(1)'")
    assert stopped.rc != 0 and "nodedown" in stopped.stdout + stopped.stderr
    wrong = fleet.hosts["bo1"].run(f"{NODE_COMMAND} --slot purple rpc 'IO.puts(1)'")
    assert wrong.rc == 2 and "--slot must be blue or green, got 'purple'" in wrong.stderr
    unprivileged = fleet.hosts["bo1"].run(f"runuser -u nobody -- {NODE_COMMAND} rpc 1")
    assert unprivileged.rc == 1 and "run it as root" in unprivileged.stderr
    no_terminal = fleet.hosts["bo1"].run(f"{NODE_COMMAND} remote < /dev/null")
    assert no_terminal.rc == 2 and "remote needs a terminal" in no_terminal.stderr


def test_no_cookie_or_secret_is_in_sight_of_another_user(fleet: Fleet) -> None:
    """ps, every /proc/*/cmdline and /proc/*/environ as nobody, while a remote shell runs."""
    key = fleet.hosts["bo1"].check_output(f"sed -n 2p /etc/{APP}/dist-tls/key.pem")
    for name in HOSTS:
        host = fleet.hosts[name]
        host.check_output(
            f"(sleep 8 | timeout 10 script -qec '{NODE_COMMAND} remote' /dev/null >/dev/null 2>&1"
            " &)"
            "; sleep 4"
        )
        seen = host.check_output(
            "runuser -u nobody -- sh -c 'ps -eo args; "
            "for f in /proc/[0-9]*/cmdline /proc/[0-9]*/environ; "
            'do tr "\\0" "\\n" < $f; done; true\' '
            "2>/dev/null"
        )
        assert f"-name {node(name, live_slot(fleet, name))}" in seen  # the VM's argv was read
        assert "-remsh" in seen  # and the remote shell's
        for secret in (COOKIE, SECRET_KEY_BASE, key):
            assert secret not in seen, f"{name}: a secret is visible to nobody"
        # root sees every argv: no cookie there either (it is read from the slot's HOME).
        argv = host.check_output("cat /proc/[0-9]*/cmdline | tr '\\0' ' '")
        assert "-setcookie -beamops_cookie_in_home_erlang_cookie" in argv
        assert COOKIE not in argv
        # With beamops_secrets_delivery credentials, the VM's own environment holds no secret:
        # it has the path to its credentials instead (as root, who may read any environ).
        unit = f"{APP}@{live_slot(fleet, name)}"
        environ = host.check_output(
            f"tr '\\0' '\\n' < /proc/$(systemctl show -p MainPID --value {unit})/environ"
        )
        assert f"CREDENTIALS_DIRECTORY=/run/credentials/{unit}.service" in environ
        assert "SECRET_KEY_BASE" not in environ and SECRET_KEY_BASE not in environ


def test_a_slot_over_its_memory_limit_is_killed_and_restarted(fleet: Fleet) -> None:
    name = "bo2"
    host = fleet.hosts[name]
    slot = idle_slot(fleet, name)
    unit = f"{APP}@{slot}"
    host.check_output(f"systemctl set-property --runtime {unit} MemoryMax=200M MemorySwapMax=0")
    try:
        host.check_output(f"systemctl start {unit}")
        before = host.check_output(f"systemctl show -p MainPID --value {unit}")
        # Holds 400 MB of binaries: more than the unit may use.
        hog = host.run(
            f"{NODE_COMMAND} --slot {slot} rpc "
            "'Agent.start(fn -> for _ <- 1..40, do: :binary.copy(<<1>>, 10_000_000) end)'"
        )
        print(hog.stdout, hog.stderr)
        restarts = f"systemctl show -p NRestarts --value {unit}"
        wait_for(f"{unit} to be restarted", lambda: host.check_output(restarts) != "0")
        active = f"systemctl is-active --quiet {unit}"
        wait_for(f"{unit} to be active again", lambda: host.run(active).rc == 0, seconds=60)
        assert host.check_output(f"systemctl show -p MainPID --value {unit}") != before
        journal = host.check_output(f"journalctl -u {unit} --since -120s --no-pager -o cat")
        # cgroup v1 (the test hosts) reports the OOM kill as SIGKILL; v2 as result 'oom-kill'.
        assert "Main process exited, code=killed, status=9/KILL" in journal, journal
        status = fleet.playbook("status")
        assert status.rc == 0
        assert f"{slot}: active, restarted 1 time" in status.output, status.tail()
    finally:
        host.check_output(f"systemctl stop {unit}; systemctl revert {unit}")


NEW_COOKIE = "rotated-cookie-R4nd0m-7Hq2kd9XpLw4Zr8Vn3"
NEW_SECRET_KEY_BASE = "rotated-secret-key-base-sk-9Vn3Bt6Yc7Hq2kd9XpLw4Zr8-0123456789"


def test_the_cluster_split_runbook_finds_the_peer_that_cannot_be_reached(fleet: Fleet) -> None:
    """bo1 and bo3 cannot reach each other (a prohibit route on each, the connection dropped):
    docs/runbooks/cluster-split.md, as written, shows bo1's node without bo3's, bo3's node
    `pang` and its host's epmd unreachable; once packets flow again the nodes rejoin."""
    live = {name: node(name, live_slot(fleet, name)) for name in HOSTS}
    cut = {"bo1": address("bo3"), "bo3": address("bo1")}
    page = Runbook("cluster-split.md", {"APP": APP, "SLOT": live_slot(fleet, "bo1")})
    try:
        for name, other in cut.items():
            fleet.hosts[name].check_output(f"ip route add prohibit {other}/32")
        # A dead peer is noticed after the distribution tick (a minute): drop it now.
        rpc(fleet, "bo1", f'Node.disconnect(:"{live["bo3"]}")')
        wait_for("bo1 to lose bo3", lambda: live["bo3"] not in connected(fleet, "bo1"))
        bo1 = fleet.hosts["bo1"]
        seen = page.ok(0, bo1).stdout.split()
        assert live["bo3"] not in seen, seen
        why = page.ok(1, bo1).stdout
        assert f"{live['bo3']} pang" in why and f"{address('bo3')}: {{:error," in why, why
        page.ok(2, bo1)
    finally:
        for name, other in cut.items():
            fleet.hosts[name].run(f"ip route del prohibit {other}/32")
    everyone = set(live.values())
    for name in HOSTS:
        rejoined = sees_the_others(fleet, name, live_slot(fleet, name), everyone)
        wait_for(f"{name} to rejoin", rejoined)
        listed = set(page.ok(0, fleet.hosts[name]).stdout.split())
        assert listed >= everyone - {live[name]}, listed
    page.all_run()


VAULT_PASSWORD = "runbook-test-vault-password"
# ansible-vault edit runs $EDITOR on the decrypted file: this one writes the rotated values.
EDITOR = """import sys
with open(sys.argv[1], "w") as vault:
    vault.write(
        "beamops_release_cookie: %s\\n"
        "beamops_secret_env:\\n  SECRET_KEY_BASE: %s\\n"
        "beamops_secrets_delivery: encrypted_credentials\\n"
    )
"""


def test_rotating_the_cookie_and_secret_key_base_is_a_blue_green_run(
    fleet: Fleet, tmp_path: Path
) -> None:
    """docs/runbooks/rotate-secrets.md, as written: the vault edited with ansible-vault, the
    serving version deployed to every host at once. The same run seals the secrets on disk
    (encrypted_credentials, real systemd-creds)."""
    password = tmp_path / "vault-password"
    password.write_text(VAULT_PASSWORD + "\n")
    vault_env = {**deploykit.ansible_env(), "ANSIBLE_VAULT_PASSWORD_FILE": str(password)}
    plain = "beamops_release_cookie: " + COOKIE + "\n"
    inventory = extended_inventory(
        tmp_path / "inventory", fleet.inventories[0], {"group_vars/beamops_app/zz-vault.yml": plain}
    )
    vault_file = Path(inventory) / "group_vars/beamops_app/zz-vault.yml"
    subprocess.run(["ansible-vault", "encrypt", str(vault_file)], env=vault_env, check=True,
                   capture_output=True)  # fmt: skip
    editor = tmp_path / "editor.py"
    editor.write_text(EDITOR % (NEW_COOKIE, NEW_SECRET_KEY_BASE))
    page = Runbook(
        "rotate-secrets.md",
        {"INVENTORY": inventory, "APP": APP, "VAULT_FILE": str(vault_file),
         "ANSIBLE_VAULT_PASSWORD_FILE": str(password), "EDITOR": f"python3 {editor}",
         **release_variables("0.2.0")},
    )  # fmt: skip
    page.ok(0)
    sealed_vault = vault_file.read_text()
    assert sealed_vault.startswith("$ANSIBLE_VAULT")
    assert NEW_COOKIE not in sealed_vault and NEW_SECRET_KEY_BASE not in sealed_vault
    before = {name: live_slot(fleet, name) for name in HOSTS}
    with fleet.under_load() as load:
        run = page.ok(1)
    assert load.failed() == 0 and load.requests() > 500, load.results
    for secret in (NEW_COOKIE, NEW_SECRET_KEY_BASE, COOKIE, SECRET_KEY_BASE):
        assert secret not in run.output
    live = {node(name, live_slot(fleet, name)) for name in HOSTS}
    for name in HOSTS:
        host = fleet.hosts[name]
        slot = live_slot(fleet, name)
        assert slot != before[name]  # a new slot took over: blue-green, not a restart
        assert host.file(f"/var/lib/{APP}/{slot}/.erlang.cookie").content_string == NEW_COOKIE
        assert rpc(fleet, name, "IO.puts(:erlang.get_cookie())") == NEW_COOKIE
        sealed = host.file(f"/etc/{APP}/{slot}.credentials/SECRET_KEY_BASE")
        assert (sealed.user, sealed.mode) == ("root", 0o600)
        assert NEW_SECRET_KEY_BASE not in sealed.content_string
        unit = f"{APP}@{slot}.service"
        # systemctl show prints this property as [unprintable]: read the unit systemd loaded.
        loaded = host.check_output(f"systemctl cat {unit}")
        assert f"LoadCredentialEncrypted=SECRET_KEY_BASE:/etc/{APP}/%i.credentials/" in loaded
        secret_length = host.check_output(EVAL_SECRET_LENGTH)
        assert secret_length == str(len(NEW_SECRET_KEY_BASE))
    for name in HOSTS:
        fleet.wait_stopped(f"{APP}@{before[name]}")
        seen = sees_the_others(fleet, name, live_slot(fleet, name), live)
        wait_for(f"{name} to see the two other live nodes on the new cookie", seen)
        listed = set(page.ok(2, fleet.hosts[name]).stdout.split())
        assert listed >= live - {node(name, live_slot(fleet, name))}, listed
    page.all_run()
