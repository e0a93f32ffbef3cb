"""release_unpack on real tarballs built here: a good one installs once, hostile ones are
refused with nothing left behind."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import tarfile
from pathlib import Path
from typing import Callable, List, Optional

import pytest
from ansible_collections.beamops.release.plugins.module_utils import release_state as rs
from ansible_collections.beamops.release.plugins.module_utils import release_unpack as ru
from ansible_collections.beamops.release.plugins.module_utils import state_repair

Member = Callable[[tarfile.TarFile], None]


def add_file(name: str, data: bytes = b"x", mode: int = 0o644) -> Member:
    def add(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.uid, info.uname = len(data), mode, 1234, "builder"
        tar.addfile(info, io.BytesIO(data))

    return add


def add_special(name: str, kind: bytes, linkname: str = "") -> Member:
    def add(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo(name)
        info.type, info.linkname = kind, linkname
        tar.addfile(info)

    return add


RELEASE: List[Member] = [
    add_file("bin/demo", b"#!/bin/sh\necho demo\n", 0o4775),
    add_file("releases/1.0.0/start.boot", b"boot"),
    add_file("erts-13.1/bin/epmd", b"\x7fELF epmd", 0o755),
    add_special("lib/current", tarfile.SYMTYPE, "../releases/1.0.0"),
]


def tarball(tmp_path: Path, members: List[Member], name: str = "demo.tar.gz") -> Path:
    path = tmp_path / name
    with tarfile.open(path, "w:gz") as tar:
        for member in members:
            member(tar)
    return path


def request(tmp_path: Path, src: Optional[Path], version: str = "1.0.0") -> ru.Request:
    digest = hashlib.sha256(src.read_bytes()).hexdigest() if src else "0" * 64
    return ru.Request(
        app="demo",
        version=version,
        sha256=digest,
        base_dir=str(tmp_path / "opt"),
        state_path=str(tmp_path / "opt" / "release-state.json"),
        helper_dir=str(tmp_path / "helper"),
        src=str(src) if src else None,
    )


def test_a_release_installs_root_owned_without_set_id_bits_then_is_left_alone(
    tmp_path: Path,
) -> None:
    src = tarball(tmp_path, RELEASE)
    asked = ru.install(request(tmp_path, None))
    assert asked.needs_transfer and not asked.changed
    first = request(tmp_path, src)
    done = ru.install(first)
    assert done.installed and done.changed and done.epmd == str(tmp_path / "helper" / "epmd")
    binary = Path(first.release_dir) / "bin" / "demo"
    mode = stat.S_IMODE(binary.stat().st_mode)
    assert mode == 0o755, oct(mode)  # set-uid and group write dropped
    assert os.readlink(Path(first.release_dir) / "lib" / "current") == "../releases/1.0.0"
    assert not Path(first.partial_dir).exists()
    state, _unused = rs.read_state(first.state_path)
    assert state["releases"]["1.0.0"]["sha256"] == first.sha256
    record = state_repair.read_record(first.release_dir, "1.0.0")
    assert record is not None and record["sha256"] == first.sha256
    # A release installed before records existed gets its own on the next deploy of it.
    os.unlink(state_repair.record_path(first.release_dir))
    again = ru.install(first)
    assert not again.changed and not again.installed and "already installed" in again.msg
    backfilled = state_repair.read_record(first.release_dir, "1.0.0")
    assert backfilled is not None and backfilled["sha256"] == first.sha256
    assert backfilled["installed_at"] == state["releases"]["1.0.0"]["installed_at"]
    known = ru.install(ru.Request(**{**first.__dict__, "src": None}))
    assert not known.needs_transfer and not known.changed


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ([*RELEASE, add_file("../../escaped")], r"'../../escaped' would land outside"),
        ([*RELEASE, add_file("/etc/cron.d/x")], r"'/etc/cron.d/x' would land outside"),
        ([*RELEASE, add_special("dev/sda", tarfile.BLKTYPE)], "is a device, FIFO"),
        ([*RELEASE, add_special("fifo", tarfile.FIFOTYPE)], "is a device, FIFO"),
        ([*RELEASE, add_special("bin/sh", tarfile.SYMTYPE, "/bin/sh")], "links to '/bin/sh'"),
        (
            [*RELEASE, add_special("lib/up", tarfile.SYMTYPE, "../../etc/shadow")],
            "links to '../../etc/shadow', outside",
        ),
        ([add_file("releases/x", b"no binary")], "no executable bin/demo"),
        ([add_file("bin/demo", b"not executable", 0o644)], "no executable bin/demo"),
    ],
    ids=["dotdot", "absolute", "device", "fifo", "abs-link", "link-out", "no-bin", "bin-not-x"],
)
def test_hostile_or_wrong_tarballs_are_refused_leaving_nothing(
    tmp_path: Path, members: List[Member], message: str
) -> None:
    wanted = request(tmp_path, tarball(tmp_path, members))
    with pytest.raises(ru.UnpackError, match=message):
        ru.install(wanted)
    releases = Path(wanted.releases_dir)
    assert sorted(p.name for p in releases.iterdir()) == []
    assert not (tmp_path / "escaped").exists()
    state, _unused = rs.read_state(wanted.state_path)
    assert state["releases"] == {}


def test_a_tarball_changed_in_transit_is_refused(tmp_path: Path) -> None:
    src = tarball(tmp_path, RELEASE)
    wanted = request(tmp_path, src)
    src.write_bytes(src.read_bytes() + b"\0")
    with pytest.raises(ru.UnpackError, match="changed in transit"):
        ru.install(wanted)


def test_a_version_never_changes_content(tmp_path: Path) -> None:
    ru.install(request(tmp_path, tarball(tmp_path, RELEASE)))
    other = tarball(tmp_path, [*RELEASE, add_file("extra")], name="other.tar.gz")
    with pytest.raises(ru.UnpackError, match="A version must never change content"):
        ru.install(request(tmp_path, other))


@pytest.mark.parametrize("version", ["../../escaped", "1.0.0/../x", ".hidden", "1.0\n"])
def test_a_version_that_is_not_a_plain_name_is_refused_before_anything(
    tmp_path: Path, version: str
) -> None:
    with pytest.raises(rs.ReleaseStateError, match="version"):
        ru.install(request(tmp_path, tarball(tmp_path, RELEASE), version=version))
    assert not (tmp_path / "opt").exists()


def test_check_mode_says_what_it_would_do_and_writes_nothing(tmp_path: Path) -> None:
    result = ru.install(request(tmp_path, tarball(tmp_path, RELEASE)), check_mode=True)
    assert result.changed and "would install" in result.msg
    assert not (tmp_path / "opt").exists()


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ([*RELEASE, add_file("../../escaped")], r"'../../escaped' would land outside"),
        ([*RELEASE, add_special("dev/sda", tarfile.CHRTYPE)], "is a device, FIFO"),
        (
            [*RELEASE, add_special("lib/up", tarfile.LNKTYPE, "../../etc/shadow")],
            "links to '../../etc/shadow', outside",
        ),
        ([add_file("releases/x", b"no binary")], "no executable bin/demo"),
        ([add_file("./bin/demo", b"not executable", 0o644)], "no executable bin/demo"),
    ],
    ids=["dotdot", "device", "hardlink-out", "no-bin", "bin-not-x"],
)
def test_the_controller_check_refuses_hostile_tarballs_without_unpacking(
    tmp_path: Path, members: List[Member], message: str
) -> None:
    src = tarball(tmp_path, members)
    with pytest.raises(ru.UnpackError, match=message):
        ru.check_tarball(str(src), "demo")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo.tar.gz"]


def test_the_controller_check_passes_a_good_release_and_counts_its_members(
    tmp_path: Path,
) -> None:
    assert ru.check_tarball(str(tarball(tmp_path, RELEASE)), "demo") == len(RELEASE)
    bad = tmp_path / "garbage.tar.gz"
    bad.write_bytes(b"not a tarball")
    with pytest.raises(ru.UnpackError, match="not a readable tarball"):
        ru.check_tarball(str(bad), "demo")


class FullDisk:
    """os.statvfs of a disk with `free` bytes and `inodes` inodes left."""

    def __init__(self, free: int, inodes: int = 100000) -> None:
        self.free, self.inodes = free, inodes

    def __call__(self, path: str) -> os.statvfs_result:
        # f_bsize, f_frsize, f_blocks, f_bfree, f_bavail, f_files, f_ffree, f_favail, ...
        blocks = self.free // 4096
        return os.statvfs_result((4096, 4096, 10**6, blocks, blocks, 10**6, self.inodes,
                                  self.inodes, 0, 255))  # fmt: skip


@pytest.mark.parametrize(
    ("disk", "message"),
    [
        (FullDisk(free=512 * 1024), r"needs about 1\.\d MiB unpacked, 0\.5 MiB is free"),
        (FullDisk(free=10**9, inodes=10), r"needs 4 inodes, 10 are free"),
    ],
)
def test_a_release_that_cannot_fit_is_refused_before_anything_is_unpacked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, disk: FullDisk, message: str
) -> None:
    wanted = request(tmp_path, tarball(tmp_path, RELEASE))
    monkeypatch.setattr(os, "statvfs", disk)
    with pytest.raises(ru.UnpackError, match=message) as refused:
        ru.install(wanted)
    assert "no room for release 1.0.0 in" in str(refused.value)
    assert "nothing was unpacked" in str(refused.value)
    assert list(Path(wanted.releases_dir).iterdir()) == []
    assert rs.read_state(wanted.state_path)[0]["releases"] == {}


def test_a_release_that_fits_with_room_to_spare_installs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "statvfs", FullDisk(free=2 * 1024 * 1024))
    assert ru.install(request(tmp_path, tarball(tmp_path, RELEASE))).installed
