# Copyright: contributors to beamops.release
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Release state of one managed host, owned by the ``release_state`` module.

The state file (default ``<base_dir>/release-state.json``) records which release runs in which
blue-green slot, which releases are installed and whether they were verified good or bad, the
per-host deploy lock and a bounded history. Playbooks never parse it: every action returns the
derived view (active/idle slot, last good release, rollback candidate, ordered releases, lock).

Pure standard library, Python 3.8+, no Ansible import, so unit tests drive it directly.

Concurrency and durability:

* every read-modify-write runs under an exclusive ``flock`` on the sibling ``<path>.lock`` file,
  so two ansible runs against the same host cannot interleave their updates;
* the file is replaced atomically (temp file in the same directory, fsync, ``os.replace``,
  fsync of the directory): a crash leaves either the old or the new state, never a mix;
* ``read`` and check mode take no lock and create nothing: atomic replacement means a reader
  always sees a whole file.

The deploy lock (``lock``/``unlock`` actions) is a different, long-lived thing: it is a record
in the state that spans a whole playbook run, naming who deploys what since when.
"""

from __future__ import annotations

import copy
import dataclasses
import errno
import fcntl
import json
import os
import re
import shutil
import stat
import tempfile
import time
from contextlib import contextmanager, suppress
from datetime import datetime, timezone
from typing import (
    Any,
    Callable,
    Dict,
    Iterator,
    List,
    Mapping,
    NoReturn,
    Optional,
    Tuple,
    TypedDict,
)

from ansible_collections.beamops.release.plugins.module_utils import routing

SCHEMA_VERSION = 1
SLOTS: Tuple[str, ...] = ("blue", "green")
STATUSES: Tuple[str, ...] = ("installed", "good", "bad")
MARKABLE_STATUSES: Tuple[str, ...] = ("good", "bad")
ACTIONS: Tuple[str, ...] = (
    "read",
    "lock",
    "unlock",
    "register",
    "mark",
    "activate",
    "record_event",
    "prune",
    "repair",  # run by state_repair.repair, not by execute: it needs the host surveyed first
)
STATE_FILE_NAME = "release-state.json"
RELEASES_DIR_NAME = "releases"
LOCK_FILE_SUFFIX = ".lock"
# Root's alone: the history holds error messages (redacted, but still the host's business).
STATE_FILE_MODE = 0o600
LOCK_FILE_MODE = 0o600
HISTORY_LIMIT = 200
# Free text (msg, reason) is for humans; capping it keeps one runaway error message from
# bloating a file that every deploy reads and rewrites.
MAX_TEXT_LENGTH = 1000
MAX_LABEL_LENGTH = 200
# A read-modify-write holds the file lock for milliseconds; waiting this long means something
# is stuck (e.g. a hung NFS server), which is worth an error rather than a silent hang.
FILE_LOCK_TIMEOUT = 30.0
TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%SZ"

# Versions name directories under releases/: no '/', no leading dot (hidden, in-progress names).
# Matched with fullmatch: `$` would let a trailing newline through.
_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_NAME_RE = re.compile(r"^[a-z][a-z0-9_.-]{0,63}$")
_CONTROL_CHARS_RE = re.compile(r"[\x00-\x1f\x7f]")

REQUIRED_PARAMETERS: Dict[str, Tuple[str, ...]] = {
    "read": (),
    "lock": ("run_id", "holder"),
    "unlock": (),
    "register": ("version", "sha256"),
    "mark": ("version", "status"),
    "activate": ("slot", "version"),
    "record_event": ("event",),
    "prune": ("releases_dir", "keep"),
    "repair": ("routing", "releases_dir"),
}
# Actions that change releases or slots must not run while another run holds the deploy lock;
# record_event is exempt: appending to the history never breaks another run.
LOCK_GUARDED_ACTIONS: Tuple[str, ...] = ("register", "mark", "activate", "prune")


class ReleaseStateError(Exception):
    """A failure meant for the operator: the message says what is wrong and what to do."""


class ValidationError(ReleaseStateError):
    """A parameter is missing or malformed; the message names the parameter."""


class StateFileError(ReleaseStateError):
    """The state file or its lock file cannot be read, parsed, locked or written."""


class DamagedStateError(StateFileError):
    """The file's content is not a state (not JSON, a field wrong): the repair action may
    rebuild it. A file of a newer schema, or one that cannot be read, is not damaged."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"release state file {path} is corrupt: {reason}; {_CORRUPT_HINT}")
        self.reason = reason


class FileLockTimeout(StateFileError):
    """Another process kept the state file lock longer than the timeout."""


class ReleaseConflictError(ReleaseStateError):
    """The request contradicts the recorded state (unknown version, changed content)."""


class LockHeldError(ReleaseStateError):
    """The deploy lock belongs to another run."""

    def __init__(self, message: str, lock: DeployLock) -> None:
        super().__init__(message)
        self.lock = lock


class SlotRef(TypedDict):
    slot: str
    version: str
    since: str
    event: str


class Release(TypedDict):
    seq: int
    status: str
    sha256: str
    installed_at: str
    updated_at: str
    reason: Optional[str]
    activated_seq: Optional[int]
    activated_at: Optional[str]


class HistoryEntry(TypedDict):
    at: str
    event: str
    version: Optional[str]
    slot: Optional[str]
    result: Optional[str]
    msg: Optional[str]
    run_id: Optional[str]


class DeployLock(TypedDict):
    run_id: str
    holder: str
    purpose: str
    since: str
    pid: Optional[int]


class Counters(TypedDict):
    install: int
    activation: int


class State(TypedDict):
    schema: int
    counters: Counters
    active: Optional[SlotRef]
    previous: Optional[SlotRef]
    releases: Dict[str, Release]
    history: List[HistoryEntry]
    lock: Optional[DeployLock]


@dataclasses.dataclass
class Request:
    """One module call. Field names are the module's parameter names."""

    action: str
    path: str
    run_id: Optional[str] = None
    holder: Optional[str] = None
    purpose: str = "deploy"
    pid: Optional[int] = None
    force: bool = False
    stale_after: Optional[int] = None
    version: Optional[str] = None
    sha256: Optional[str] = None
    status: Optional[str] = None
    reason: Optional[str] = None
    slot: Optional[str] = None
    event: Optional[str] = None
    result: Optional[str] = None
    msg: Optional[str] = None
    releases_dir: Optional[str] = None
    keep: Optional[int] = None
    protect: List[str] = dataclasses.field(default_factory=list)
    # read and lock: where the proxy says which slot it routes to (see routing.Routing). read
    # reports a state that disagrees with it; lock also makes the state follow the proxy.
    routing: Optional[Dict[str, Any]] = None


@dataclasses.dataclass
class _Outcome:
    """What an action handler reports besides the new state."""

    msg: str
    extra: Dict[str, Any] = dataclasses.field(default_factory=dict)
    warnings: List[str] = dataclasses.field(default_factory=list)
    # Set when the action changed the state but then failed part-way (prune): the state is
    # written first so it matches the disk, then this error is raised.
    failure: Optional[str] = None


@dataclasses.dataclass
class _Context:
    state: State
    request: Request
    now: datetime
    check_mode: bool

    @property
    def timestamp(self) -> str:
        return format_timestamp(self.now)


# --------------------------------------------------------------------------- time


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def format_timestamp(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime(TIMESTAMP_FORMAT)


def parse_timestamp(text: str) -> Optional[datetime]:
    try:
        return datetime.strptime(text, TIMESTAMP_FORMAT).replace(tzinfo=timezone.utc)
    except ValueError:
        return None


def _describe_age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds}s ago"
    if seconds < 7200:
        return f"{seconds // 60}m ago"
    if seconds < 172800:
        return f"{seconds // 3600}h ago"
    return f"{seconds // 86400}d ago"


# --------------------------------------------------------------------------- parameters


def request_from_params(params: Mapping[str, Any]) -> Request:
    """Build a Request from module parameters, deriving ``path``/``releases_dir`` from base_dir."""
    base_dir: Optional[str] = params.get("base_dir")
    path: Optional[str] = params.get("path")
    if not path:
        if not base_dir:
            raise ValidationError("one of base_dir or path is required to locate the state file")
        path = os.path.join(base_dir, STATE_FILE_NAME)
    releases_dir: Optional[str] = params.get("releases_dir")
    if not releases_dir and base_dir:
        releases_dir = os.path.join(base_dir, RELEASES_DIR_NAME)
    fields = {f.name for f in dataclasses.fields(Request)} - {"path", "releases_dir"}
    values = {name: params[name] for name in fields if params.get(name) is not None}
    return Request(path=path, releases_dir=releases_dir, **values)


def validate_request(request: Request) -> None:
    """Raise ValidationError naming the first parameter that is missing or malformed."""
    if request.action not in ACTIONS:
        _invalid("action", f"one of {', '.join(ACTIONS)}", request.action)
    _check_absolute_path("path", request.path)
    for name in REQUIRED_PARAMETERS[request.action]:
        if getattr(request, name) in (None, ""):
            raise ValidationError(f"{name} is required when action={request.action}")
    if request.action == "unlock" and not request.run_id and not request.force:
        raise ValidationError("unlock needs run_id (the run that holds the lock) or force=true")
    _validate_formats(request)


def _validate_formats(request: Request) -> None:
    for label in ("run_id", "holder", "purpose"):
        value = getattr(request, label)
        if value is not None:
            _check_label(label, value)
    if request.version is not None:
        check_version("version", request.version)
    for version in request.protect:
        check_version("protect", version)
    if request.sha256 is not None and not _SHA256_RE.fullmatch(request.sha256.lower()):
        _invalid(
            "sha256", "64 hexadecimal characters (the release tarball's SHA-256)", request.sha256
        )
    if request.status is not None and request.status not in MARKABLE_STATUSES:
        _invalid("status", " or ".join(MARKABLE_STATUSES), request.status)
    if request.slot is not None and request.slot not in SLOTS:
        _invalid("slot", "|".join(SLOTS), request.slot)
    for name in ("event", "result"):
        value = getattr(request, name)
        if value is not None and not _NAME_RE.fullmatch(value):
            _invalid(
                name, "a lowercase word such as deploy, rollback, switch_back, ok, failed", value
            )
    _check_positive_int("pid", request.pid, minimum=1)
    _check_positive_int("stale_after", request.stale_after, minimum=1)
    _check_positive_int("keep", request.keep, minimum=1)
    if request.releases_dir is not None:
        _check_absolute_path("releases_dir", request.releases_dir)


def is_version(value: object) -> bool:
    """Whether VALUE can name a release (and its directory under releases/)."""
    return isinstance(value, str) and _VERSION_RE.fullmatch(value) is not None


def is_sha256(value: object) -> bool:
    return isinstance(value, str) and _SHA256_RE.fullmatch(value) is not None


def check_version(name: str, value: object) -> None:
    if not is_version(value):
        _invalid(
            name,
            "a non-empty release version of letters, digits and . _ + - starting with a letter "
            "or digit (it names a directory under releases/, so no '/')",
            value,
        )


def _check_label(name: str, value: object) -> None:
    if (
        not isinstance(value, str)
        or not value.strip()
        or len(value) > MAX_LABEL_LENGTH
        or _CONTROL_CHARS_RE.search(value)
    ):
        _invalid(name, f"a non-empty single-line string of at most {MAX_LABEL_LENGTH} chars", value)


def _check_absolute_path(name: str, value: object) -> None:
    if not isinstance(value, str) or not os.path.isabs(value):
        _invalid(name, "an absolute path", value)


def _check_positive_int(name: str, value: object, minimum: int) -> None:
    if value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        _invalid(name, f"an integer >= {minimum}", value)


def _invalid(name: str, expected: str, got: object) -> NoReturn:
    raise ValidationError(f"{name} must be {expected}, got {got!r}")


def _clip(text: Optional[str]) -> Optional[str]:
    if text is None or len(text) <= MAX_TEXT_LENGTH:
        return text
    return text[: MAX_TEXT_LENGTH - 12] + " [truncated]"


# --------------------------------------------------------------------------- state file format


def empty_state() -> State:
    return {
        "schema": SCHEMA_VERSION,
        "counters": {"install": 0, "activation": 0},
        "active": None,
        "previous": None,
        "releases": {},
        "history": [],
        "lock": None,
    }


def serialize_state(state: State) -> str:
    # ensure_ascii keeps the file valid UTF-8 whatever bytes a message carried.
    return json.dumps(state, indent=2, ensure_ascii=True) + "\n"


def parse_state(text: str, path: str) -> State:
    """Parse and validate the file content; raise StateFileError naming the path and field."""
    try:
        raw = json.loads(text)
    except ValueError as exc:
        raise DamagedStateError(path, f"not valid JSON ({exc})") from None
    return _StateParser(path).state(raw)


_CORRUPT_HINT = (
    "it was left untouched. Run playbooks/repair.yml to rebuild it from what runs on the host "
    "(the damaged file is kept beside it), or restore it from a backup"
)


class _StateParser:
    """Turns decoded JSON into a State, failing with the path and the offending field."""

    def __init__(self, path: str) -> None:
        self.path = path

    def fail(self, where: str, expected: str, got: object) -> NoReturn:
        raise DamagedStateError(self.path, f"{where} must be {expected}, got {got!r}")

    def state(self, raw: object) -> State:
        top = self.mapping(raw, "the top level")
        schema = self.integer(top, "schema", "")
        if schema > SCHEMA_VERSION:
            raise StateFileError(
                f"release state file {self.path} has schema {schema}, written by a newer "
                f"beamops.release; this one understands schema {SCHEMA_VERSION} and will not "
                "touch it: upgrade the collection"
            )
        if schema < 1:
            self.fail("schema", f"an integer between 1 and {SCHEMA_VERSION}", schema)
        state = empty_state()
        # A hand-written minimal file ({"schema": 1}) is fine: absent parts are empty.
        releases = self.mapping(top.get("releases", {}), "releases")
        for version, raw_release in releases.items():
            if not _VERSION_RE.fullmatch(version):
                self.fail("each key of releases", "a release version", version)
            state["releases"][version] = self.release(raw_release, f"releases[{version!r}]")
        history = top.get("history", [])
        if not isinstance(history, list):
            self.fail("history", "a list", history)
        state["history"] = [self.history_entry(e, f"history[{i}]") for i, e in enumerate(history)]
        state["active"] = self.slot_ref(top.get("active"), "active")
        state["previous"] = self.slot_ref(top.get("previous"), "previous")
        state["lock"] = self.lock(top.get("lock"), "lock")
        counters = self.mapping(top.get("counters", {}), "counters")
        # Counters must stay ahead of every recorded sequence number, even after a hand edit.
        seqs = [r["seq"] for r in state["releases"].values()]
        activations = [r["activated_seq"] or 0 for r in state["releases"].values()]
        state["counters"] = {
            "install": max([self.integer(counters, "install", "counters.", 0), *seqs]),
            "activation": max([self.integer(counters, "activation", "counters.", 0), *activations]),
        }
        return state

    def mapping(self, raw: object, where: str) -> Dict[str, Any]:
        if not isinstance(raw, dict):
            self.fail(where, "a JSON object", raw)
        return raw

    def integer(
        self, obj: Dict[str, Any], key: str, prefix: str, default: Optional[int] = None
    ) -> int:
        value = obj.get(key, default)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            self.fail(prefix + key, "a non-negative integer", value)
        return value

    def optional_integer(self, obj: Dict[str, Any], key: str, prefix: str) -> Optional[int]:
        if obj.get(key) is None:
            return None
        return self.integer(obj, key, prefix)

    def text(
        self, obj: Dict[str, Any], key: str, prefix: str, choices: Tuple[str, ...] = ()
    ) -> str:
        value = obj.get(key)
        if not isinstance(value, str) or not value:
            self.fail(prefix + key, "a non-empty string", value)
        if choices and value not in choices:
            self.fail(prefix + key, "one of " + ", ".join(choices), value)
        return value

    def optional_text(self, obj: Dict[str, Any], key: str, prefix: str) -> Optional[str]:
        value = obj.get(key)
        if value is not None and not isinstance(value, str):
            self.fail(prefix + key, "a string or null", value)
        return value

    def timestamp(self, obj: Dict[str, Any], key: str, prefix: str) -> str:
        value = self.text(obj, key, prefix)
        if parse_timestamp(value) is None:
            self.fail(prefix + key, "a UTC timestamp like 2026-01-31T12:00:00Z", value)
        return value

    def release(self, raw: object, where: str) -> Release:
        obj = self.mapping(raw, where)
        prefix = where + "."
        return {
            "seq": self.integer(obj, "seq", prefix),
            "status": self.text(obj, "status", prefix, STATUSES),
            "sha256": self.text(obj, "sha256", prefix),
            "installed_at": self.text(obj, "installed_at", prefix),
            "updated_at": self.text(obj, "updated_at", prefix),
            "reason": self.optional_text(obj, "reason", prefix),
            "activated_seq": self.optional_integer(obj, "activated_seq", prefix),
            "activated_at": self.optional_text(obj, "activated_at", prefix),
        }

    def history_entry(self, raw: object, where: str) -> HistoryEntry:
        obj = self.mapping(raw, where)
        prefix = where + "."
        return {
            "at": self.text(obj, "at", prefix),
            "event": self.text(obj, "event", prefix),
            "version": self.optional_text(obj, "version", prefix),
            "slot": self.optional_text(obj, "slot", prefix),
            "result": self.optional_text(obj, "result", prefix),
            "msg": self.optional_text(obj, "msg", prefix),
            "run_id": self.optional_text(obj, "run_id", prefix),
        }

    def slot_ref(self, raw: object, where: str) -> Optional[SlotRef]:
        if raw is None:
            return None
        obj = self.mapping(raw, where)
        prefix = where + "."
        return {
            "slot": self.text(obj, "slot", prefix, SLOTS),
            "version": self.text(obj, "version", prefix),
            "since": self.text(obj, "since", prefix),
            "event": self.text(obj, "event", prefix),
        }

    def lock(self, raw: object, where: str) -> Optional[DeployLock]:
        if raw is None:
            return None
        obj = self.mapping(raw, where)
        prefix = where + "."
        return {
            "run_id": self.text(obj, "run_id", prefix),
            "holder": self.text(obj, "holder", prefix),
            "purpose": self.text(obj, "purpose", prefix),
            # Staleness is computed from it, so it must parse.
            "since": self.timestamp(obj, "since", prefix),
            "pid": self.optional_integer(obj, "pid", prefix),
        }


# --------------------------------------------------------------------------- file I/O


def lock_file_path(path: str) -> str:
    return path + LOCK_FILE_SUFFIX


def read_state(path: str) -> Tuple[State, Optional[str]]:
    """Return the parsed state and the file's text; a missing file is the empty state (None)."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except FileNotFoundError:
        return empty_state(), None
    except UnicodeDecodeError as exc:
        raise DamagedStateError(path, f"not UTF-8 text ({exc})") from None
    except OSError as exc:
        raise StateFileError(f"cannot read release state file {path}: {exc}") from None
    return parse_state(text, path), text


@contextmanager
def exclusive_file_lock(path: str, timeout: float = FILE_LOCK_TIMEOUT) -> Iterator[None]:
    """Hold an exclusive flock on ``<path>.lock`` (created if needed) for a read-modify-write."""
    with _held_flock(lock_file_path(path), timeout):
        yield


@contextmanager
def _held_flock(lock_path: str, timeout: float) -> Iterator[int]:
    """An exclusive flock on lock_path (created root-only if needed); yields its descriptor."""
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, LOCK_FILE_MODE)
    except FileNotFoundError:
        raise StateFileError(
            f"cannot create lock file {lock_path}: directory {os.path.dirname(lock_path)} does "
            "not exist; create base_dir before using the release state"
        ) from None
    except OSError as exc:
        raise StateFileError(f"cannot open lock file {lock_path}: {exc}") from None
    try:
        # Root's alone: anyone who can open it can flock it and hold every deploy back.
        if os.fstat(fd).st_mode & 0o077 and os.geteuid() == os.fstat(fd).st_uid:
            os.fchmod(fd, LOCK_FILE_MODE)
        _flock_with_timeout(fd, lock_path, timeout)
        yield fd
    finally:
        os.close(fd)  # closing the descriptor releases the flock


def cutover_mark_path(path: str) -> str:
    return path + ".cutover"


@contextmanager
def cutover_in_progress(path: str) -> Iterator[None]:
    """Held (an flock on ``<state>.cutover``, naming this pid) for as long as a cutover or a
    host rollback runs. The module outlives a killed controller; a forced take-over of the
    deploy lock must not start a second cutover beside it."""
    with _held_flock(cutover_mark_path(path), FILE_LOCK_TIMEOUT) as fd:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield


def cutover_running(path: str) -> Optional[str]:
    """The pid of a cutover still running on this host, or None."""
    mark = cutover_mark_path(path)
    try:
        fd = os.open(mark, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return os.read(fd, 32).decode(errors="replace").strip() or "?"
    finally:
        os.close(fd)
    return None


def _flock_with_timeout(fd: int, lock_path: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise StateFileError(f"cannot lock {lock_path}: {exc}") from None
        if time.monotonic() >= deadline:
            raise FileLockTimeout(
                f"another process kept {lock_path} locked for more than {timeout:g}s; "
                "a read-modify-write takes milliseconds, so look for a hung process "
                f"(fuser -v {lock_path})"
            )
        time.sleep(0.02)


def write_state_file(path: str, text: str) -> None:
    """Atomically replace ``path`` with ``text`` (mode 0600). Call with the file lock held."""
    directory = os.path.dirname(path) or "."
    prefix = "." + os.path.basename(path) + "."
    _remove_leftover_temp_files(directory, prefix)
    try:
        fd, temp_path = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=directory)
    except OSError as exc:
        raise StateFileError(f"cannot write release state file {path}: {exc}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            # Root-only (STATE_FILE_MODE): the lock in it is a deploy's, and failure messages
            # carry a release's own log lines.
            os.fchmod(handle.fileno(), STATE_FILE_MODE)
            _keep_ownership(path, handle.fileno())
            os.fsync(handle.fileno())
        os.replace(temp_path, path)
    except BaseException as exc:
        _unlink_quietly(temp_path)
        if isinstance(exc, OSError):
            raise StateFileError(
                f"cannot write release state file {path}: {exc}; its previous content is intact"
            ) from None
        raise
    _fsync_directory(directory)


def _remove_leftover_temp_files(directory: str, prefix: str) -> None:
    # Only a writer killed between mkstemp and os.replace leaves these; we hold the file lock,
    # so none of them belongs to a live writer.
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        if name.startswith(prefix) and name.endswith(".tmp"):
            _unlink_quietly(os.path.join(directory, name))


def _keep_ownership(path: str, fd: int) -> None:
    # Running as root must not take the file away from the app user that owned it.
    if os.geteuid() != 0:
        return
    try:
        current = os.stat(path)
    except FileNotFoundError:
        return
    os.fchown(fd, current.st_uid, current.st_gid)


def _fsync_directory(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink_quietly(path: str) -> None:
    with suppress(OSError):
        os.unlink(path)


# --------------------------------------------------------------------------- derived view


def idle_slot(state: State) -> str:
    active = state["active"]
    if active is None:
        return SLOTS[0]
    return SLOTS[1] if active["slot"] == SLOTS[0] else SLOTS[0]


def good_versions_by_activation(state: State) -> List[str]:
    """Releases marked good that have been active at least once, most recently activated first.

    A release never activated is not evidence of anything, whatever its status says.
    """
    ranked = [
        (release["activated_seq"], version)
        for version, release in state["releases"].items()
        if release["status"] == "good" and release["activated_seq"] is not None
    ]
    return [version for _unused, version in sorted(ranked, reverse=True)]


def last_good_version(state: State) -> Optional[str]:
    """The most recently activated release marked good (may be the active one)."""
    ranked = good_versions_by_activation(state)
    return ranked[0] if ranked else None


def rollback_candidate(state: State) -> Optional[str]:
    """Where a rollback goes by default: the most recently activated good release that is not
    active now."""
    active = state["active"]
    active_version = active["version"] if active else None
    for version in good_versions_by_activation(state):
        if version != active_version:
            return version
    return None


def ordered_releases(state: State) -> List[Dict[str, Any]]:
    """Known releases, oldest install first, each flagged active/previous."""
    active = state["active"]
    previous = state["previous"]
    entries: List[Dict[str, Any]] = []
    for version, release in sorted(state["releases"].items(), key=lambda item: item[1]["seq"]):
        entry: Dict[str, Any] = {"version": version}
        entry.update(release)
        entry["active"] = active is not None and active["version"] == version
        entry["previous"] = previous is not None and previous["version"] == version
        entries.append(entry)
    return entries


def derive_view(state: State) -> Dict[str, Any]:
    active = state["active"]
    return {
        "state": state,
        "active_slot": active["slot"] if active else None,
        "active_version": active["version"] if active else None,
        "idle_slot": idle_slot(state),
        "previous": state["previous"],
        "last_good_version": last_good_version(state),
        "rollback_candidate": rollback_candidate(state),
        "releases": ordered_releases(state),
        "lock": state["lock"],
    }


# --------------------------------------------------------------------------- actions


def execute(
    request: Request,
    check_mode: bool = False,
    now: Optional[datetime] = None,
    lock_timeout: float = FILE_LOCK_TIMEOUT,
) -> Dict[str, Any]:
    """Validate and run one action; return the module result (without ``failed``).

    The result always carries the derived view of the state after the action and a ``diff``
    (before/after file text). In check mode the state is computed but nothing is written.
    Raises ReleaseStateError (or a subclass) for anything the operator must fix.
    """
    validate_request(request)
    if request.action not in _HANDLERS and request.action != "read":
        raise ValidationError(f"action={request.action} is not run by execute()")
    moment = now if now is not None else utc_now()
    if request.action == "read":
        state, text = read_state(request.path)
        outcome = _Outcome(msg=_summary(state, request.path, text is None))
        outcome.extra.update(_routing_view(state, routing.routing_from(request.routing)))
        return _result(
            request=request,
            state=state,
            changed=False,
            before_text=text or "",
            after_text=text or "",
            outcome=outcome,
        )
    if request.action == "lock" and not check_mode:
        # Taking the deploy lock is a host's first step: its base directory may not exist yet.
        os.makedirs(os.path.dirname(os.path.abspath(request.path)), mode=0o755, exist_ok=True)
    with _write_lock(request.path, check_mode, lock_timeout):
        before, before_text = read_state(request.path)
        after = copy.deepcopy(before)
        outcome = _HANDLERS[request.action](_Context(after, request, moment, check_mode))
        changed = after != before
        after_text = serialize_state(after) if changed else (before_text or "")
        if changed and not check_mode:
            write_state_file(request.path, after_text)
    if outcome.failure:
        raise ReleaseStateError(outcome.failure)
    return _result(
        request=request,
        state=after,
        changed=changed,
        before_text=before_text or "",
        after_text=after_text,
        outcome=outcome,
    )


@contextmanager
def _write_lock(path: str, check_mode: bool, timeout: float) -> Iterator[None]:
    # Check mode writes nothing, not even the lock file; it reads an atomically replaced file.
    if check_mode:
        yield
        return
    with exclusive_file_lock(path, timeout):
        yield


def _result(
    *,
    request: Request,
    state: State,
    changed: bool,
    before_text: str,
    after_text: str,
    outcome: _Outcome,
) -> Dict[str, Any]:
    # Not "path": AnsibleModule.exit_json would then add file facts, overwriting "state".
    result: Dict[str, Any] = {"changed": changed, "msg": outcome.msg, "state_file": request.path}
    result.update(derive_view(state))
    result.update(outcome.extra)
    result["warnings"] = outcome.warnings
    result["diff"] = {
        "before": before_text,
        "after": after_text,
        "before_header": request.path,
        "after_header": request.path,
    }
    return result


def _summary(state: State, path: str, missing: bool) -> str:
    if missing:
        return f"no release state at {path} yet (empty state)"
    active = state["active"]
    if active is None:
        return f"{len(state['releases'])} release(s) known, none active"
    return f"{active['version']} active on {active['slot']}"


def _append_history(ctx: _Context, event: str, **fields: Optional[str]) -> None:
    """append_history for a handler: its state, timestamp and run."""
    append_history(ctx.state, ctx.timestamp, ctx.request.run_id, event, **fields)


def append_history(
    state: State,
    timestamp: str,
    run_id: Optional[str],
    event: str,
    *,
    version: Optional[str] = None,
    slot: Optional[str] = None,
    result: Optional[str] = None,
    msg: Optional[str] = None,
) -> None:
    history = state["history"]
    history.append(
        {
            "at": timestamp,
            "event": event,
            "version": version,
            "slot": slot,
            "result": result,
            "msg": _clip(msg),
            "run_id": run_id,
        }
    )
    del history[:-HISTORY_LIMIT]


def describe_lock(path: str, lock: DeployLock, now: datetime) -> str:
    since = parse_timestamp(lock["since"])
    age = f" ({_describe_age((now - since).total_seconds())})" if since else ""
    pid = f", pid {lock['pid']}" if lock["pid"] is not None else ""
    return (
        f"deploy lock on {path} is held by {lock['holder']} ({lock['purpose']}) "
        f"since {lock['since']}{age}, run {lock['run_id']}{pid}"
    )


def _lock_age(lock: DeployLock, now: datetime) -> Optional[float]:
    since = parse_timestamp(lock["since"])
    return (now - since).total_seconds() if since else None


def _ensure_lock_allows(ctx: _Context) -> None:
    """Refuse to change releases or slots while another run holds the deploy lock."""
    lock = ctx.state["lock"]
    request = ctx.request
    if lock is None or lock["run_id"] == request.run_id or request.force:
        return
    this_run = f"run {request.run_id}" if request.run_id else "this call (no run_id given)"
    raise LockHeldError(
        f"{describe_lock(request.path, lock, ctx.now)}; {this_run} may not {request.action} "
        f"while it is held: pass the run_id that holds it, wait for it, or run with force",
        lock,
    )


def _do_lock(ctx: _Context) -> _Outcome:
    request = ctx.request
    run_id, holder = _required(request.run_id), _required(request.holder)  # validated before
    current = ctx.state["lock"]
    outcome = _Outcome(msg="", extra={"stolen_from": None})
    if current is not None and current["run_id"] == request.run_id:
        outcome.msg = f"deploy lock already held by this run ({request.run_id})"
        return outcome
    if current is not None:
        age = _lock_age(current, ctx.now)
        stale = request.stale_after is not None and age is not None and age > request.stale_after
        if not stale and not request.force:
            raise LockHeldError(
                f"{describe_lock(request.path, current, ctx.now)}; wait for it or run with "
                "force (or stale_after) to take it over",
                current,
            )
        switching = cutover_running(request.path)
        if switching:
            raise LockHeldError(
                f"{describe_lock(request.path, current, ctx.now)}, and its cutover is still "
                f"running on this host (pid {switching}): not taken over; it finishes by itself "
                "within its watch and drain, then try again",
                current,
            )
        how = f"stale (older than stale_after={request.stale_after}s)" if stale else "forced"
        outcome.msg = f"took over the {how} {describe_lock(request.path, current, ctx.now)}"
        outcome.extra["stolen_from"] = current
        outcome.warnings.append(outcome.msg)
        _append_history(ctx, "lock", result="stolen", msg=outcome.msg)
    else:
        outcome.msg = f"deploy lock acquired by {holder} for run {run_id}"
        _append_history(ctx, "lock", result="acquired", msg=request.purpose)
    ctx.state["lock"] = {
        "run_id": run_id,
        "holder": holder,
        "purpose": request.purpose,
        "since": ctx.timestamp,
        "pid": request.pid,
    }
    _follow_the_proxy(ctx, outcome)
    return outcome


def _routing_view(state: State, where: Optional[routing.Routing]) -> Dict[str, Any]:
    """routed_slot: the slot the proxy routes to; drift: why the state disagrees, or ''."""
    if where is None:
        return {}
    routed = routing.routed_slot(where)
    active = state["active"]
    drift = ""
    if routed is not None and active is not None and routed != active["slot"]:
        drift = (
            f"the state says {active['version']} serves on slot {active['slot']}, but the "
            f"proxy routes to slot {routed}"
        )
    return {"routed_slot": routed, "drift": drift or _lost_state(state, where, routed)}


def _lost_state(state: State, where: routing.Routing, routed: Optional[str]) -> str:
    """Why the state looks lost (it knows no release while the proxy routes to a slot that
    runs one), or ''. Read only: the lock refuses such a state, the repair rebuilds it."""
    if state["active"] is not None or state["releases"] or routed is None:
        return ""
    version = routing.slot_version(where, routed)
    if version is None:
        return ""
    return (
        f"the state knows no release, but the proxy routes to slot {routed} running {version}: "
        "the state was lost; run playbooks/repair.yml"
    )


def follow_the_proxy(
    state: State, where: Optional[routing.Routing], timestamp: str, run_id: Optional[str]
) -> Tuple[Dict[str, Any], Optional[str]]:
    """Make ``state`` name the slot the proxy really routes to; return (view, warning).

    A run killed between the switch and the state write leaves them apart; taking the state's
    word would make the next run restart the slot that serves. The proxy is what clients
    see, so the state follows it (never the other way round), and the warning says so. When
    the routed slot runs no release the state knows, nothing changes but the warning.
    """
    view = _routing_view(state, where)
    if where is None or not view.get("drift"):
        return view, None
    slot = str(view["routed_slot"])
    version = routing.slot_version(where, slot)
    if version is None or version not in state["releases"]:
        return view, (
            f"{view['drift']}, and slot {slot} runs no release this state knows "
            f"({version or 'no link'}): left as it is; no cutover restarts slot {slot}"
        )
    repaired = f"{view['drift']}: the state now follows the proxy ({version} on {slot})"
    state["previous"] = state["active"]
    state["active"] = {"slot": slot, "version": version, "since": timestamp, "event": "repair"}
    append_history(
        state, timestamp, run_id, "repair", version=version, slot=slot,
        result="followed proxy", msg=repaired,
    )  # fmt: skip
    view["drift_repaired"] = True
    return view, repaired


def _follow_the_proxy(ctx: _Context, outcome: _Outcome) -> None:
    where = routing.routing_from(ctx.request.routing)
    _refuse_a_lost_state(ctx.state, where, ctx.request.path)
    view, warning = follow_the_proxy(ctx.state, where, ctx.timestamp, ctx.request.run_id)
    outcome.extra.update(view)
    if warning:
        outcome.warnings.append(warning)


def _refuse_a_lost_state(state: State, where: Optional[routing.Routing], path: str) -> None:
    """A state that knows no release on a host whose proxy routes to a slot running one was
    lost (deleted, restored from an old backup): a deploy would forget what serves and what
    to roll back to. The repair rebuilds it from the host first."""
    lost = _lost_state(state, where, routing.routed_slot(where)) if where else ""
    if lost:
        raise ReleaseStateError(
            f"{path}: {lost} to rebuild it from the host (nothing is restarted), then deploy again"
        )


def _do_unlock(ctx: _Context) -> _Outcome:
    request = ctx.request
    current = ctx.state["lock"]
    outcome = _Outcome(msg="", extra={"stolen_from": None})
    if current is None:
        outcome.msg = "deploy lock already free"
        return outcome
    if current["run_id"] != request.run_id:
        if not request.force:
            raise LockHeldError(
                f"cannot unlock: {describe_lock(request.path, current, ctx.now)}, not by run "
                f"{request.run_id}; run with force to release it anyway",
                current,
            )
        outcome.msg = f"force-released the {describe_lock(request.path, current, ctx.now)}"
        outcome.extra["stolen_from"] = current
        outcome.warnings.append(outcome.msg)
        _append_history(ctx, "unlock", result="forced", msg=outcome.msg)
    else:
        outcome.msg = f"deploy lock released by run {request.run_id}"
        _append_history(ctx, "unlock", result="released")
    ctx.state["lock"] = None
    return outcome


def _do_register(ctx: _Context) -> _Outcome:
    _ensure_lock_allows(ctx)
    version = _required(ctx.request.version)
    sha256 = _required(ctx.request.sha256).lower()
    known = ctx.state["releases"].get(version)
    if known is not None:
        if known["sha256"] != sha256:
            raise ReleaseConflictError(
                f"release {version} is already registered in {ctx.request.path} with sha256 "
                f"{known['sha256']}, not {sha256}: a version must not change content; build a "
                "new version, or prune the old one first if it is not in use"
            )
        return _Outcome(msg=f"release {version} already registered (seq {known['seq']})")
    seq = add_installed_release(ctx.state, version, sha256, ctx.timestamp, ctx.timestamp)
    _append_history(ctx, "register", version=version, result="installed", msg=f"sha256 {sha256}")
    return _Outcome(msg=f"release {version} registered (seq {seq})")


def add_installed_release(
    state: State, version: str, sha256: str, installed_at: str, timestamp: str
) -> int:
    """Add VERSION as installed under the next install number (register, and a repair learning
    a release from its install record); return that number."""
    counters = state["counters"]
    counters["install"] += 1
    state["releases"][version] = {
        "seq": counters["install"],
        "status": "installed",
        "sha256": sha256,
        "installed_at": installed_at,
        "updated_at": timestamp,
        "reason": None,
        "activated_seq": None,
        "activated_at": None,
    }
    return counters["install"]


def _do_mark(ctx: _Context) -> _Outcome:
    _ensure_lock_allows(ctx)
    version = _required(ctx.request.version)
    status = _required(ctx.request.status)
    reason = _clip(ctx.request.reason)
    release = _known_release(ctx, version)
    # Re-marking without a reason keeps the recorded one: re-running a play stays unchanged.
    if release["status"] == status and reason in (None, release["reason"]):
        return _Outcome(msg=f"release {version} already marked {status}")
    release["status"] = status
    release["reason"] = reason
    release["updated_at"] = ctx.timestamp
    active = ctx.state["active"]
    slot = active["slot"] if active and active["version"] == version else None
    _append_history(ctx, "mark", version=version, slot=slot, result=status, msg=reason)
    return _Outcome(msg=f"release {version} marked {status}")


def _do_activate(ctx: _Context) -> _Outcome:
    _ensure_lock_allows(ctx)
    version = _required(ctx.request.version)
    slot = _required(ctx.request.slot)
    event = ctx.request.event or "deploy"
    release = _known_release(ctx, version)
    active = ctx.state["active"]
    if active is not None and active["slot"] == slot and active["version"] == version:
        return _Outcome(msg=f"release {version} already active on {slot}")
    outcome = _Outcome(msg=f"release {version} active on {slot} ({event})")
    if release["status"] == "bad":
        outcome.warnings.append(
            f"activating release {version}, which is marked bad"
            + (f": {release['reason']}" if release["reason"] else "")
        )
    counters = ctx.state["counters"]
    counters["activation"] += 1
    if active is not None:
        ctx.state["previous"] = active
    ctx.state["active"] = {"slot": slot, "version": version, "since": ctx.timestamp, "event": event}
    release["activated_seq"] = counters["activation"]
    release["activated_at"] = ctx.timestamp
    release["updated_at"] = ctx.timestamp
    _append_history(ctx, event, version=version, slot=slot, result="activated", msg=ctx.request.msg)
    return outcome


def _do_record_event(ctx: _Context) -> _Outcome:
    request = ctx.request
    event = _required(request.event)
    _append_history(
        ctx,
        event,
        version=request.version,
        slot=request.slot,
        result=request.result,
        msg=request.msg,
    )
    return _Outcome(msg=f"recorded {event} event")


def _known_release(ctx: _Context, version: str) -> Release:
    release = ctx.state["releases"].get(version)
    if release is None:
        known = ", ".join(v["version"] for v in ordered_releases(ctx.state)) or "none"
        raise ReleaseConflictError(
            f"release {version} is not registered in {ctx.request.path} (known: {known}); "
            "register it first"
        )
    return release


def _required(value: Optional[str]) -> str:
    if value is None:  # validate_request guarantees presence; this keeps the types honest
        raise ValidationError("internal error: a required parameter is missing")
    return value


# --------------------------------------------------------------------------- prune


@dataclasses.dataclass
class PrunePlan:
    """Which known releases to remove and why the others stay."""

    remove: List[str]
    keep_reasons: Dict[str, List[str]]
    unknown: List[str]


def plan_prune(state: State, on_disk: List[str], keep: int, protect: List[str]) -> PrunePlan:
    """Keep the ``keep`` most recently installed releases (install sequence, never mtime) and
    every release a rollback or the running service may need."""
    by_install = sorted(state["releases"], key=lambda v: state["releases"][v]["seq"], reverse=True)
    reasons: Dict[str, List[str]] = {version: [] for version in by_install}
    for version in by_install[:keep]:
        reasons[version].append("recent")
    active = state["active"]
    previous = state["previous"]
    pinned: List[Tuple[str, Optional[str]]] = [
        ("active", active["version"] if active else None),
        ("previous", previous["version"] if previous else None),
        ("last_good", last_good_version(state)),
        ("rollback_candidate", rollback_candidate(state)),
    ] + [("protect", version) for version in protect]
    for why, pinned_version in pinned:
        if pinned_version in reasons and why not in reasons[pinned_version]:
            reasons[pinned_version].append(why)
    remove = [version for version in reversed(by_install) if not reasons[version]]
    keep_reasons = {version: why for version, why in reasons.items() if why}
    unknown = sorted(name for name in on_disk if name not in state["releases"])
    return PrunePlan(remove=remove, keep_reasons=keep_reasons, unknown=unknown)


def _do_prune(ctx: _Context) -> _Outcome:
    _ensure_lock_allows(ctx)
    request = ctx.request
    releases_dir = _required(request.releases_dir)
    keep = request.keep if request.keep is not None else 1
    on_disk = _list_release_dir(releases_dir)
    plan = plan_prune(ctx.state, on_disk, keep, request.protect)
    removed: List[str] = []
    skipped: Dict[str, str] = {}
    failure: Optional[str] = None
    for version in plan.remove:
        target = os.path.join(releases_dir, version)
        problem = _unsafe_to_remove(releases_dir, target)
        if problem:
            skipped[version] = problem
            continue
        if not ctx.check_mode and os.path.lexists(target):
            try:
                shutil.rmtree(target)
            except OSError as exc:
                # Stop here: what was removed so far is dropped from the state below.
                failure = f"prune stopped: cannot remove {target}: {exc}"
                break
        removed.append(version)
        del ctx.state["releases"][version]
    order = {v: ctx.state["releases"][v]["seq"] for v in ctx.state["releases"]}
    kept = sorted(plan.keep_reasons, key=lambda v: order.get(v, 0))
    missing = [v for v in kept if not os.path.lexists(os.path.join(releases_dir, v))]
    outcome = _Outcome(
        msg=_prune_summary(removed, kept, ctx.check_mode),
        extra={
            "removed": removed,
            "kept": kept,
            "kept_reasons": plan.keep_reasons,
            "unknown": plan.unknown,
            "skipped": skipped,
            "missing": missing,
        },
        failure=failure,
    )
    outcome.warnings.extend(f"not removing release {v}: {why}" for v, why in skipped.items())
    outcome.warnings.extend(
        f"release {v} is kept ({', '.join(plan.keep_reasons[v])}) but {releases_dir}/{v} is missing"
        for v in missing
    )
    if removed:
        _append_history(ctx, "prune", result="removed", msg="removed " + ", ".join(removed))
    return outcome


def _list_release_dir(releases_dir: str) -> List[str]:
    if not os.path.isdir(releases_dir):
        raise ValidationError(f"releases_dir {releases_dir} does not exist or is not a directory")
    try:
        return sorted(os.listdir(releases_dir))
    except OSError as exc:
        raise StateFileError(f"cannot list releases_dir {releases_dir}: {exc}") from None


def _unsafe_to_remove(releases_dir: str, target: str) -> Optional[str]:
    """Why ``target`` must not be rmtree'd, or None when it is a plain directory directly
    inside releases_dir (or already gone)."""
    try:
        mode = os.lstat(target).st_mode
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(mode):
        return f"{target} is a symlink; not following it"
    if not stat.S_ISDIR(mode):
        return f"{target} is not a directory"
    parent = os.path.realpath(releases_dir)
    if os.path.dirname(os.path.realpath(target)) != parent:
        return f"{target} does not resolve to a direct child of {parent}"
    return None


def _prune_summary(removed: List[str], kept: List[str], check_mode: bool) -> str:
    verb = "would remove" if check_mode else "removed"
    gone = ", ".join(removed) if removed else "nothing"
    return f"{verb} {gone}; kept {', '.join(kept) or 'nothing'}"


_HANDLERS: Dict[str, Callable[[_Context], _Outcome]] = {
    "lock": _do_lock,
    "unlock": _do_unlock,
    "register": _do_register,
    "mark": _do_mark,
    "activate": _do_activate,
    "record_event": _do_record_event,
    "prune": _do_prune,
}
