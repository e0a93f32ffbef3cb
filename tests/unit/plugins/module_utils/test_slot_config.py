"""slot_config writes real files (as root, the way it runs on hosts): exact content, owners
and modes, nothing rewritten twice, secrets never in a diff, bad names refused."""

from __future__ import annotations

import dataclasses
import grp
import os
import pwd
import stat
from pathlib import Path

import pytest
from ansible_collections.beamops.release.plugins.module_utils import slot_config as sc
from ansible_collections.beamops.release.plugins.modules import slot_config as module

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="writes root-owned files")
USER, GROUP = "nobody", grp.getgrgid(pwd.getpwnam("nobody").pw_gid).gr_name


def request(tmp_path: Path, **changes: object) -> sc.Request:
    made = sc.Request(
        slot="blue",
        config_dir=str(tmp_path / "etc"),
        state_dir=str(tmp_path / "var"),
        app_user=USER,
        app_group=GROUP,
        env={"GREETING": 'say "hi" $HOME'},
        reserved={"PORT": 4001, "SLOT": "blue"},
        secret_env={"SECRET_KEY_BASE": "s3cret-value"},
        cookie="cookie-0123456789abcdefghij",
        vm_args=["+S 2:2"],
    )
    return dataclasses.replace(made, **changes)  # type: ignore[arg-type]


def owner_mode(path: Path) -> tuple[int, int, int]:
    info = path.stat()
    return info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)


def test_files_directories_owners_and_modes(tmp_path: Path) -> None:
    changed, changes = sc.apply(request(tmp_path))
    gid, uid = grp.getgrnam(GROUP).gr_gid, pwd.getpwnam(USER).pw_uid
    etc = tmp_path / "etc"
    assert changed and len(changes) == 5
    assert owner_mode(etc) == (0, gid, 0o750)
    assert owner_mode(etc / "blue.env") == (0, gid, 0o640)
    assert owner_mode(etc / "blue.secrets.env") == (0, 0, 0o600)
    assert owner_mode(etc / "blue.vm.args") == (0, gid, 0o640)
    assert owner_mode(etc / "blue.remote.vm.args") == (0, gid, 0o640)
    assert owner_mode(tmp_path / "var" / "blue") == (uid, gid, 0o750)
    # The VM reads its cookie itself, from HOME, as Erlang does; never from argv or environ.
    cookie = tmp_path / "var" / "blue" / ".erlang.cookie"
    assert owner_mode(cookie) == (uid, gid, 0o400)
    assert cookie.read_text() == "cookie-0123456789abcdefghij"
    plain = (etc / "blue.env").read_text()
    assert 'GREETING="say \\"hi\\" \\$HOME"\nPORT="4001"\n' in plain
    assert f'RELEASE_COOKIE="{sc.COOKIE_FROM_HOME}"\nSLOT="blue"\n' in plain
    assert "s3cret" not in plain and "cookie-0123" not in plain
    secrets = (etc / "blue.secrets.env").read_text()
    assert "cookie-0123" not in secrets
    assert 'SECRET_KEY_BASE="s3cret-value"' in secrets
    assert (etc / "blue.vm.args").read_text().endswith("-start_epmd false\n+S 2:2\n")


def test_a_second_run_changes_nothing_and_check_mode_writes_nothing(tmp_path: Path) -> None:
    sc.apply(request(tmp_path))
    assert sc.apply(request(tmp_path)) == (False, [])
    rotated = request(tmp_path, secret_env={"SECRET_KEY_BASE": "rotated"})
    before = (tmp_path / "etc" / "blue.secrets.env").read_text()
    changed, changes = sc.apply(rotated, check_mode=True)
    assert changed and [c.path.endswith("blue.secrets.env") for c in changes] == [True]
    assert (tmp_path / "etc" / "blue.secrets.env").read_text() == before


def test_the_diff_never_holds_a_secret(tmp_path: Path) -> None:
    _unused, changes = sc.apply(request(tmp_path))
    text = repr(module.diff_of(changes))
    assert "s3cret" not in text and "cookie-0123" not in text
    assert "GREETING" in text and "(secret: content not shown)" in text


def test_a_mode_or_owner_changed_by_hand_is_put_back(tmp_path: Path) -> None:
    sc.apply(request(tmp_path))
    secrets = tmp_path / "etc" / "blue.secrets.env"
    secrets.chmod(0o644)
    changed, changes = sc.apply(request(tmp_path))
    assert changed and owner_mode(secrets)[2] == 0o600
    assert [c.path for c in changes] == [str(secrets)]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"env": {"PORT": "1"}}, "beamops_env sets PORT: the collection sets"),
        ({"secret_env": {"RELEASE_COOKIE": "x"}}, "beamops_secret_env sets RELEASE_COOKIE"),
        ({"env": {"A": "1"}, "secret_env": {"A": "2"}}, "both beamops_env and beamops_secret_env"),
        ({"env": {"BAD-NAME": "1"}}, "'BAD-NAME' is not a valid environment variable name"),
        ({"env": {"X": "two\nlines"}}, "the value of X contains a newline"),
        ({"vm_args": ["+S 2\n-eval evil"]}, "must be one line of text"),
        ({"beam": {"busy_wait": "forever"}}, "beamops_beam_busy_wait: got 'forever'"),
        ({"app_user": "no-such-user-here"}, "does not exist on the host"),
    ],
)
def test_bad_settings_are_refused_before_anything_is_written(
    tmp_path: Path, changes: dict[str, object], message: str
) -> None:
    with pytest.raises(sc.ConfigError, match=message):
        sc.apply(request(tmp_path, **changes))
    assert not (tmp_path / "etc").exists()


def test_check_mode_on_a_fresh_host_without_the_account_reports_changes(tmp_path: Path) -> None:
    fresh = request(tmp_path, app_user="no-such-user-yet", app_group="no-such-group-yet")
    changed, changes = sc.apply(fresh, check_mode=True)
    assert changed and len(changes) == 5
    assert not (tmp_path / "etc").exists()


def test_the_vm_s_limits_come_first_in_vm_args_then_the_user_s_lines(tmp_path: Path) -> None:
    beam = {"schedulers": "2:2", "process_limit": 1048576, "port_limit": 65536, "busy_wait": "none"}
    sc.apply(request(tmp_path, beam=beam, vm_args=["-kernel inet_dist_use_interface {127,0,0,1}"]))
    assert (
        (tmp_path / "etc" / "blue.vm.args")
        .read_text()
        .endswith(
            "-start_epmd false\n+S 2:2\n+P 1048576\n+Q 65536\n+sbwt none\n+sbwtdcpu none\n"
            "+sbwtdio none\n-kernel inet_dist_use_interface {127,0,0,1}\n"
        )
    )
    assert sc.beam_flags({"schedulers": "", "process_limit": None}) == []


DIST = {"address": "10.0.0.7", "port": 9101}


def test_distribution_is_bound_to_one_interface_and_the_slot_s_own_port(tmp_path: Path) -> None:
    sc.apply(request(tmp_path, dist=DIST, vm_args=[]))
    etc = tmp_path / "etc"
    bound = "-kernel inet_dist_use_interface {10,0,0,7}\n"
    assert (
        (etc / "blue.vm.args")
        .read_text()
        .endswith(
            f"-start_epmd false\n{bound}"
            "-kernel inet_dist_listen_min 9101\n-kernel inet_dist_listen_max 9101\n"
        )
    )
    # A remote shell beside the slot takes any free port, on the same interface.
    assert (etc / "blue.remote.vm.args").read_text().endswith(f"-start_epmd false\n{bound}")
    assert not (etc / "dist-tls").exists()


@pytest.mark.parametrize("address", ["10.0.0", "::1", "10.0.0.256", "host.example"])
def test_a_distribution_address_that_is_not_ipv4_is_refused(tmp_path: Path, address: str) -> None:
    with pytest.raises(sc.ConfigError, match=f"beamops_dist_address: got '{address}'"):
        sc.apply(request(tmp_path, dist={"address": address}))


TLS = {**DIST, "tls": True, "cert": "CERT PEM", "key": "KEY PEM", "cacert": "CA PEM"}


def test_tls_distribution_writes_its_options_and_keeps_the_key_from_others(tmp_path: Path) -> None:
    _unused, changes = sc.apply(request(tmp_path, dist=TLS, vm_args=[]))
    gid = grp.getgrnam(GROUP).gr_gid
    tls = tmp_path / "etc" / "dist-tls"
    assert owner_mode(tls) == (0, gid, 0o750)
    assert owner_mode(tls / "key.pem") == (0, gid, 0o640)
    assert (tls / "key.pem").read_text() == "KEY PEM\n"
    optfile = f"-ssl_dist_optfile {tls}/ssl_dist.conf\n"
    for name in ("blue.vm.args", "blue.remote.vm.args"):
        assert (tmp_path / "etc" / name).read_text().endswith(f"-proto_dist inet_tls\n{optfile}")
    conf = (tls / "ssl_dist.conf").read_text()
    assert conf.count(f'{{keyfile, "{tls}/key.pem"}}') == 2
    assert conf.count("{verify, verify_peer}") == 2 and "{fail_if_no_peer_cert, true}" in conf
    assert "KEY PEM" not in repr(module.diff_of(changes))


def test_tls_distribution_without_a_certificate_is_refused(tmp_path: Path) -> None:
    with pytest.raises(sc.ConfigError, match="beamops_dist_tls_key is empty"):
        sc.apply(request(tmp_path, dist={**TLS, "key": ""}))
    assert not (tmp_path / "etc").exists()


def test_secrets_as_credentials_are_files_and_not_environment(tmp_path: Path) -> None:
    secret_env = {"SECRET_KEY_BASE": "s3cret-value", "FEATURE_TOKEN": True}
    _unused, changes = sc.apply(
        request(tmp_path, secret_env=secret_env, secrets_delivery="credentials")
    )
    folder = tmp_path / "etc" / "blue.credentials"
    assert owner_mode(folder) == (0, 0, 0o700)
    assert owner_mode(folder / "SECRET_KEY_BASE") == (0, 0, 0o600)
    assert (folder / "SECRET_KEY_BASE").read_text() == "s3cret-value"  # as it is: no newline
    assert (folder / "FEATURE_TOKEN").read_text() == "true"
    assert "s3cret" not in (tmp_path / "etc" / "blue.secrets.env").read_text()
    assert "s3cret" not in repr(module.diff_of(changes))
    # A secret dropped, then the delivery switched back: no credential file is left behind.
    sc.apply(request(tmp_path, secret_env={"FEATURE_TOKEN": 1}, secrets_delivery="credentials"))
    assert sorted(p.name for p in folder.iterdir()) == ["FEATURE_TOKEN"]
    changed, changes = sc.apply(request(tmp_path))
    assert changed and not folder.exists()
    assert 'SECRET_KEY_BASE="s3cret-value"' in (tmp_path / "etc" / "blue.secrets.env").read_text()


def test_an_unknown_secrets_delivery_is_refused(tmp_path: Path) -> None:
    with pytest.raises(sc.ConfigError, match="beamops_secrets_delivery: got 'vault'"):
        sc.apply(request(tmp_path, secrets_delivery="vault"))


def test_encrypted_credentials_hold_ciphertext_and_are_compared_decrypted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """systemd-creds stands in as a reversible fake here; the deploy scenario uses the real one."""
    fake = tmp_path / "systemd-creds"
    fake.write_text(
        "#!/bin/sh\n"
        "name=${2#--name=}\n"
        'if [ "$1" = encrypt ]; then printf "sealed:%s:" "$name"; base64 -w0; exit 0; fi\n'
        'body=$(cat "$3"); case "$body" in "sealed:$name:"*) ;; *) exit 1 ;; esac\n'
        'printf %s "${body#sealed:$name:}" | base64 -d\n'
    )
    fake.chmod(0o755)
    monkeypatch.setattr(sc, "SYSTEMD_CREDS", str(fake))
    sealed = request(tmp_path, secrets_delivery="encrypted_credentials")
    changed, changes = sc.apply(sealed)
    path = tmp_path / "etc" / "blue.credentials" / "SECRET_KEY_BASE"
    assert path.read_text().startswith("sealed:SECRET_KEY_BASE:")
    assert "s3cret-value" not in path.read_text()
    assert sc.apply(sealed) == (False, [])  # decrypted and found equal: not rewritten
    rotated = request(tmp_path, secrets_delivery="encrypted_credentials",
                      secret_env={"SECRET_KEY_BASE": "rotated"})  # fmt: skip
    changed, changes = sc.apply(rotated)
    assert changed and [c.path for c in changes] == [str(path)]
