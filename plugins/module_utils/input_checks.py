# Copyright: contributors to beamops.release
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Every input of a deploy or rollback, checked on the controller before any host changes.

Argument specs check types and presence; these rules check what specs cannot say: patterns
(full match), ranges, distinct ports, control characters in strings that land in a unit or a
config file, environment names, a deny list of names that change how the VM or the loader
starts, the cookie's strength, and the example secrets shipped with the collection.

Each problem names the variable, its value (never a secret's) and what is expected. The rules
also write the README's "What is checked before a host is touched" section
(docs/gen_variables.py), so the list there is this list.

Pure standard library, Python 3.8+.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import os
import re
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Tuple

VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")
APP_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
ACCOUNT = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
SHA256 = re.compile(r"[0-9a-fA-F]{64}")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
CONTROL = re.compile(r"[\x00-\x1f\x7f]")
ENV_VALUE_FORBIDDEN = re.compile(r"[\x00\r\n]")

# Names that change how the loader or the VM starts, or that the release script and this
# collection set per slot: an environment file must not override them.
DENIED_ENV = re.compile(
    r"LD_[A-Z0-9_]*|PATH|ERL_[A-Z0-9_]*FLAGS|ERL_LIBS|ELIXIR_ERL_OPTIONS|HOME|PORT|SLOT"
    r"|ERL_CRASH_DUMP|CLUSTER_NODES"
    r"|RELEASE_(COOKIE|NODE|DISTRIBUTION|VM_ARGS|REMOTE_VM_ARGS|TMP|ROOT|NAME|VSN|PROG|SYS_CONFIG)"
)
# Accounts of the OS and of common services: the release must not run as (or rewrite) them.
SYSTEM_ACCOUNTS = frozenset(
    [
        "root",
        "daemon",
        "bin",
        "sys",
        "sync",
        "games",
        "man",
        "lp",
        "mail",
        "news",
        "uucp",
        "proxy",
        "www-data",
        "backup",
        "list",
        "irc",
        "gnats",
        "nobody",
        "nogroup",
        "_apt",
        "messagebus",
        "sshd",
        "polkitd",
        "postgres",
        "mysql",
        "redis",
        "nginx",
        "haproxy",
        "prometheus",
        "node_exporter",
        "adm",
        "tty",
        "disk",
        "kmem",
        "dialout",
        "cdrom",
        "floppy",
        "audio",
        "video",
        "plugdev",
        "staff",
        "users",
        "sudo",
        "shadow",
        "utmp",
    ]
)
# sha256 (first 32 hex digits) of the secrets in the example inventories shipped with the
# collection (demo, staging, production). Anyone can read them: they must never reach a host
# outside a demo (beamops_allow_example_secrets). tests/lint checks the list is complete.
EXAMPLE_SECRETS = frozenset(
    {
        "53854fefa1103eb3f413ac7f97880921",
        "514023d802d98ecbb4b188c92ac9444b",
        "c6fb16e21ed84e5b5ebee63ee8bd9cf6",
        "657749340b3a885290fe46f4e8508f1e",
        "3d9203ceb7df4315f70d06827230bff1",
        "27c3326de730184b5b60945a287a210d",
    }
)
COOKIE_MIN_LENGTH = 20
COOKIE_MIN_DISTINCT = 10
SECRET_VARIABLES = frozenset(
    {"beamops_release_cookie", "beamops_secret_env", "beamops_dist_tls_key"}
)
ENV_VARIABLES = ("beamops_env", "beamops_secret_env")
# PEM text: many lines by nature, written to files of their own (never into a line).
PEM_VARIABLES = ("beamops_dist_tls_cert", "beamops_dist_tls_key", "beamops_dist_tls_cacert")

# name -> (lowest, lowest allowed itself, highest or None)
NUMBERS: Dict[str, Tuple[float, bool, Optional[float]]] = {
    "beamops_releases_keep": (1, True, None),
    "beamops_drain_seconds": (0, True, None),
    "beamops_watch_seconds": (0, True, None),
    "beamops_watch_interval": (0, False, None),
    "beamops_watch_failure_threshold": (1, True, None),
    "beamops_watch_max_5xx_ratio": (0, False, 1),
    "beamops_gate_interval": (0, False, None),
    "beamops_gate_timeout": (0, False, None),
    "beamops_gate_success_threshold": (1, True, None),
    "beamops_start_timeout": (1, True, None),
    "beamops_stop_timeout": (1, True, None),
    "beamops_restart_sec": (0, True, None),
    "beamops_start_limit_burst": (1, True, None),
    "beamops_start_limit_interval": (1, True, None),
    "beamops_tasks_max": (16, True, None),
    "beamops_limit_nofile": (1024, True, None),
    "beamops_cpu_weight": (1, True, 10000),
    "beamops_beam_process_limit": (1024, True, 134217727),
    "beamops_beam_port_limit": (1024, True, 134217727),
    "beamops_lock_stale_after": (0, True, None),
    "beamops_max_fail_percentage": (0, True, 100),
    "beamops_artifact_download_timeout": (1, True, None),
}


def _number(value: float) -> str:
    """1, 0.5 and 134217727 as a person writes them (not 1.34218e+08)."""
    return str(int(value)) if value == int(value) else f"{value:g}"


def fingerprint(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8")).hexdigest()[:32]


def shown(value: object) -> str:
    """A value as the error shows it: repr for strings (control characters visible), short."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


@dataclasses.dataclass
class Inputs:
    values: Mapping[str, Any]
    purpose: str = "deploy"  # deploy or rollback

    def has(self, name: str) -> bool:
        return self.values.get(name) is not None

    def get(self, name: str, default: object = None) -> object:
        value = self.values.get(name)
        return default if value is None else value


Check = Callable[[Inputs], Iterator[str]]


@dataclasses.dataclass(frozen=True)
class Rule:
    title: str
    expects: str
    check: Check


RULES: List[Rule] = []


def rule(title: str, expects: str) -> Callable[[Check], Check]:
    def register(check: Check) -> Check:
        RULES.append(Rule(title, expects, check))
        return check

    return register


def problems(values: Mapping[str, Any], purpose: str = "deploy") -> List[str]:
    """Every problem of every rule, in the order of RULES (empty: the inputs are fine)."""
    inputs = Inputs(values, purpose)
    return [problem for each in RULES for problem in each.check(inputs)]


def _version(name: str, value: object) -> Iterator[str]:
    if isinstance(value, (bool, int, float)):
        yield (
            f"{name}: got {value!r}, a number (YAML reads an unquoted 1.10 as 1.1); expected a "
            f'string: quote it, e.g. {name}: "{value}"'
        )
    elif not isinstance(value, str) or not VERSION.fullmatch(value) or ".." in value:
        yield (
            f"{name}: got {shown(value)}; expected letters, digits and . _ + - starting with a "
            "letter or digit, at most 128 characters, no '/' or '..' (it names a directory "
            "under releases/)"
        )


@rule(
    "Release version",
    "`beamops_release_version` (deploy) and `rollback_to` (rollback): a string (a version YAML "
    "reads as a number is refused with a hint to quote it) of letters, digits and `. _ + -`, "
    "starting with a letter or digit, no `/` or `..`, full match; `beamops_release_sha256`: "
    "64 hex digits.",
)
def _check_version(inputs: Inputs) -> Iterator[str]:
    if inputs.purpose == "deploy":
        yield from _version("beamops_release_version", inputs.get("beamops_release_version"))
        sha = inputs.get("beamops_release_sha256")
        if not isinstance(sha, str) or not SHA256.fullmatch(sha):
            yield f"beamops_release_sha256: got {shown(sha)}; expected 64 hex digits"
    elif inputs.get("rollback_to") not in (None, ""):  # blank: a survey left empty
        yield from _version("rollback_to", inputs.get("rollback_to"))


@rule(
    "App name, user and group",
    "`beamops_app_name`: lower case letters, digits and `_`, starting with a letter (the OTP "
    "release name). `beamops_app_user`/`beamops_app_group`: a system account name, never "
    "`root`; an account of the OS or of a common service (`daemon`, `www-data`, `postgres`, "
    "`haproxy`, ...) only with `beamops_app_user_adopt`. On the host, before anything else, an "
    "existing account the collection did not create, or uid/gid 0, is refused the same way.",
)
def _check_names(inputs: Inputs) -> Iterator[str]:
    app = inputs.get("beamops_app_name")
    if not isinstance(app, str) or not APP_NAME.fullmatch(app):
        yield (
            f"beamops_app_name: got {shown(app)}; expected the OTP release name: lower case "
            "letters, digits and _, starting with a letter, at most 64 characters"
        )
    adopt = bool(inputs.get("beamops_app_user_adopt", False))
    for name in ("beamops_app_user", "beamops_app_group"):
        value = inputs.get(name, app)
        if not isinstance(value, str) or not ACCOUNT.fullmatch(value):
            yield f"{name}: got {shown(value)}; expected a system account name ([a-z_][a-z0-9_-]*)"
        elif value == "root" or (value in SYSTEM_ACCOUNTS and not adopt):
            yield (
                f"{name}: {value!r} belongs to the OS or another service; the release would run "
                "as it. Choose the app's own name"
                + ("" if value == "root" else ", or set beamops_app_user_adopt: true")
            )


def _strings(value: object, where: str) -> Iterator[Tuple[str, str]]:
    if isinstance(value, str):
        yield where, value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _strings(key, f"{where} (key)")
            yield from _strings(item, f"{where}.{key}")
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from _strings(item, f"{where}[{index}]")


@rule(
    "No control characters",
    "Every string of every `beamops_*` variable (keys and items of lists and mappings too; "
    "PEM text aside) has no control character (newline, carriage return, tab, NUL, ...): "
    "these strings land in unit, "
    "config and vm.args files, where a newline would add a directive.",
)
def _check_control_characters(inputs: Inputs) -> Iterator[str]:
    for name in sorted(inputs.values):
        if not name.startswith("beamops_") or name in ENV_VARIABLES or name in PEM_VARIABLES:
            continue
        for where, text in _strings(inputs.values[name], name):
            if CONTROL.search(text):
                value = "(secret)" if name in SECRET_VARIABLES else shown(text)
                yield f"{where}: got {value}; expected one line without control characters"


@rule(
    "Environment",
    "`beamops_env` and `beamops_secret_env`: POSIX names (`[A-Za-z_][A-Za-z0-9_]*`), values "
    "that are strings, numbers or booleans without NUL, CR or LF, no name in both, and none "
    "that changes how the loader or the VM starts or that the release script and the "
    "collection set: `LD_*`, `PATH`, `HOME`, `ERL_*FLAGS`, `ERL_LIBS`, `ELIXIR_ERL_OPTIONS`, "
    "`ERL_CRASH_DUMP`, `PORT`, `SLOT`, `CLUSTER_NODES`, `RELEASE_COOKIE`, `RELEASE_NODE`, "
    "`RELEASE_DISTRIBUTION`, `RELEASE_VM_ARGS`, `RELEASE_REMOTE_VM_ARGS`, `RELEASE_TMP`, "
    "`RELEASE_ROOT`, `RELEASE_NAME`, `RELEASE_VSN`, "
    "`RELEASE_PROG`, `RELEASE_SYS_CONFIG`. Secret values are never shown.",
)
def _check_environment(inputs: Inputs) -> Iterator[str]:
    seen: Dict[str, str] = {}
    for source in ENV_VARIABLES:
        mapping = inputs.get(source, {})
        if not isinstance(mapping, Mapping):
            yield f"{source}: expected a mapping of NAME: value"
            continue
        secret = source in SECRET_VARIABLES
        for name, value in mapping.items():
            yield from _env_entry(source, name, value, secret)
            if name in seen:
                yield f"{source}: {name} is also in {seen[name]}; a name is plain or secret"
            seen[str(name)] = source


def _env_entry(source: str, name: object, value: object, secret: bool) -> Iterator[str]:
    if not isinstance(name, str) or not ENV_NAME.fullmatch(name):
        yield f"{source}: {shown(name)} is not a POSIX environment variable name"
        return
    if DENIED_ENV.fullmatch(name):
        yield (
            f"{source}: {name} changes how the loader or the VM starts, or is set by the "
            "release script or the collection per slot; it cannot be set here"
        )
    if not isinstance(value, (str, int, float)):  # bool is an int
        yield f"{source}.{name}: expected a string, number or boolean"
    elif ENV_VALUE_FORBIDDEN.search(str(value)):
        what = "its value" if secret else shown(value)
        yield f"{source}.{name}: {what} has a NUL, CR or LF; expected one line"


EPMD_PORT = 4369


def _slot_ports(inputs: Inputs, name: str, default: Mapping[str, int]) -> Iterator[Any]:
    slots = inputs.get(name, default)
    if not isinstance(slots, Mapping) or sorted(slots) != ["blue", "green"]:
        yield f"{name}: got {shown(slots)}; expected exactly the keys blue and green"
    else:
        yield from ((f"{name}.{slot}", slots[slot]) for slot in ("blue", "green"))


@rule(
    "Ports",
    "`beamops_slot_ports` and (with distribution) `beamops_dist_ports` each map exactly `blue` "
    "and `green`; those ports, `beamops_proxy_port` and a non-zero `beamops_scrape_port` are "
    f"integers from 1 to 65535, all distinct, and none is epmd's {EPMD_PORT}.",
)
def _check_ports(inputs: Inputs) -> Iterator[str]:
    ports: List[Tuple[str, Any]] = [("beamops_proxy_port", inputs.get("beamops_proxy_port", 80))]
    scrape_port = inputs.get("beamops_scrape_port", 0)
    if scrape_port != 0:
        ports.append(("beamops_scrape_port", scrape_port))
    maps = [("beamops_slot_ports", {"blue": 4001, "green": 4002})]
    if inputs.get("beamops_release_distribution", "sname") != "none":
        maps.append(("beamops_dist_ports", {"blue": 9101, "green": 9102}))
    for name, default in maps:
        for found in _slot_ports(inputs, name, default):
            if isinstance(found, str):
                yield found
            else:
                ports.append(found)
    for name, port in ports:
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            yield f"{name}: got {shown(port)}; expected a TCP port from 1 to 65535"
        elif port == EPMD_PORT:
            yield f"{name}: got {port}, epmd's port; expected another"
    numbers = [port for _unused, port in ports]
    if len(set(map(str, numbers))) != len(numbers):
        listed = ", ".join(f"{name}={port}" for name, port in ports)
        yield f"ports must be distinct: {listed}"


def _inventory_group(name: str, group: object, inputs: Inputs) -> Iterator[str]:
    """`group` must be a group of the inventory (the action plugin hands their names in)."""
    groups = inputs.get("__inventory_groups", [])
    if isinstance(groups, (list, tuple)) and group not in groups:
        yield f"{name}: {shown(group)} is not a group of the inventory"


@rule(
    "Distribution and cluster",
    "With distribution: `beamops_dist_address` an IPv4 address (with `name`, not loopback when "
    "`beamops_cluster_group` is set: peers on other hosts must reach it); "
    "`beamops_cluster_group` empty or an inventory group, and only with distribution `name`; "
    "with `beamops_dist_tls`, `beamops_dist_tls_cert`, `beamops_dist_tls_key` and "
    "`beamops_dist_tls_cacert` PEM text (the key's never shown).",
)
def _check_distribution(inputs: Inputs) -> Iterator[str]:
    distribution = inputs.get("beamops_release_distribution", "sname")
    if distribution == "none":
        return
    address = inputs.get("beamops_dist_address", "127.0.0.1")
    group = inputs.get("beamops_cluster_group", "")
    try:
        parsed = ipaddress.IPv4Address(str(address))
    except ValueError:
        yield (
            f"beamops_dist_address: got {shown(address)}; expected an IPv4 address (the "
            "interface distribution and epmd listen on; with name it defaults to ansible_host)"
        )
    else:
        if group and parsed.is_loopback:
            yield (
                f"beamops_dist_address: got {address}, a loopback address; expected one that the "
                f"other hosts of beamops_cluster_group {group!r} reach"
            )
    if group:
        if distribution != "name":
            yield (
                f"beamops_cluster_group: {group!r} needs beamops_release_distribution name "
                f"(node names that other hosts resolve), got {distribution}"
            )
        yield from _inventory_group("beamops_cluster_group", group, inputs)
    if inputs.get("beamops_dist_tls", False):
        for name in PEM_VARIABLES:
            value = inputs.get(name, "")
            if not isinstance(value, str) or "-----BEGIN " not in value:
                what = "(secret)" if name in SECRET_VARIABLES else shown(value)
                yield (
                    f"{name}: got {what}; expected PEM text (-----BEGIN ...), as "
                    "beamops_dist_tls is true"
                )


def _ipv4_network(value: object) -> bool:
    try:
        ipaddress.IPv4Network(str(value), strict=False)
    except ValueError:
        return False
    return isinstance(value, str)


@rule(
    "Monitoring",
    "`beamops_prometheus_group` empty or an inventory group, whose hosts' `ansible_host` are "
    "IPv4 addresses (the scrape listener allows them); with a scrape listener "
    "(`beamops_scrape_port` not 0), `beamops_scrape_address` an IPv4 address; "
    "`beamops_scrape_allow` IPv4 addresses or networks; `beamops_metrics_path` an absolute URL "
    "path.",
)
def _check_monitoring(inputs: Inputs) -> Iterator[str]:
    group = inputs.get("beamops_prometheus_group", "")
    if group:
        yield from _inventory_group("beamops_prometheus_group", group, inputs)
    if inputs.get("beamops_scrape_port", 0) != 0:
        address = inputs.get("beamops_scrape_address", "127.0.0.1")
        try:
            ipaddress.IPv4Address(str(address))
        except ValueError:
            yield (
                f"beamops_scrape_address: got {shown(address)}; expected an IPv4 address (the "
                "proxy's scrape listener; it defaults to ansible_host)"
            )
        allowed = inputs.get("__beamops_scrape_allow", [])
        for entry in allowed if isinstance(allowed, list) else [allowed]:
            if not _ipv4_network(entry):
                yield (
                    f"scrape allow list: got {shown(entry)}; expected IPv4 addresses or networks "
                    "(beamops_scrape_allow, and the ansible_host of each host of "
                    "beamops_prometheus_group)"
                )
    path = inputs.get("beamops_metrics_path", "/metrics")
    if not isinstance(path, str) or not URL_PATH.fullmatch(path):
        yield (
            f"beamops_metrics_path: got {shown(path)}; expected an absolute URL path such as "
            "/metrics"
        )


@rule(
    "Webhooks",
    "`beamops_webhooks`: a list of mappings, each with a `url` starting `http://` or `https://`, "
    "a `timeout` above 0 and `retries` of 0 or more (a URL is named by its scheme and host only: "
    "its path may hold a token).",
)
def _check_webhooks(inputs: Inputs) -> Iterator[str]:
    hooks = inputs.get("beamops_webhooks", [])
    if not isinstance(hooks, list):
        yield "beamops_webhooks: expected a list of {url, timeout, retries, headers}"
        return
    for index, hook in enumerate(hooks):
        where = f"beamops_webhooks[{index}]"
        url = hook.get("url") if isinstance(hook, Mapping) else None
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            yield f"{where}.url: expected an http:// or https:// URL"
            continue
        timeout = hook.get("timeout", 5)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            yield f"{where}.timeout: got {shown(timeout)}; expected seconds above 0"
        retries = hook.get("retries", 2)
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            yield f"{where}.retries: got {shown(retries)}; expected 0 or more"


HOOK_POINTS = ("before_start", "after_gate", "after_switch", "after_retire", "on_failure")


@rule(
    "Hooks",
    f"`beamops_hooks`: a mapping from hook points ({', '.join(HOOK_POINTS)}) to lists of "
    "task files, each an absolute path to a file that exists on the controller.",
)
def _check_hooks(inputs: Inputs) -> Iterator[str]:
    hooks = inputs.get("beamops_hooks", {})
    if not isinstance(hooks, Mapping):
        yield f"beamops_hooks: got {shown(hooks)}; expected a mapping of hook points to task files"
        return
    for point, files in hooks.items():
        if point not in HOOK_POINTS:
            points = ", ".join(HOOK_POINTS)
            yield f"beamops_hooks.{point}: not a hook point; expected one of {points}"
            continue
        for path in files if isinstance(files, list) else [files]:
            if not isinstance(path, str) or not os.path.isabs(path) or not os.path.isfile(path):
                yield (
                    f"beamops_hooks.{point}: got {shown(path)}; expected the absolute path of a "
                    'task file on the controller, e.g. "{{ inventory_dir }}/hooks/notify.yml"'
                )


URL_PATH = re.compile(r"/[A-Za-z0-9._~!$&'()*+,;=:@%/?-]*")
# systemd's sizes (bytes with K, M, G or T, a share of RAM, infinity) and CPU quota; +S.
MEMORY_SIZE = re.compile(r"[1-9][0-9]*[KMGT]?|[1-9][0-9]?(\.[0-9]+)?%|infinity")
CPU_QUOTA = re.compile(r"[1-9][0-9]*%")
SCHEDULERS = re.compile(r"[1-9][0-9]{0,3}(:[1-9][0-9]{0,3})?")
LIMIT_PATTERNS = (
    ("beamops_memory_max", MEMORY_SIZE, "a size such as 512M, 2G or 80%"),
    ("beamops_memory_high", MEMORY_SIZE, "a size such as 400M, 2G or 70%"),
    ("beamops_cpu_quota", CPU_QUOTA, "a percentage such as 200% (two CPUs' worth)"),
    ("beamops_beam_schedulers", SCHEDULERS, "schedulers such as 2 or 2:2"),
)


@rule(
    "Health paths and the proxy's address",
    "`beamops_ready_path` and `beamops_live_path`: an absolute URL path (`/` then URL "
    "characters, no space), as the probes, the units and HAProxy's check send it. "
    "`beamops_proxy_bind`: an IPv4 address (the templates write `address:port`).",
)
def _check_paths_and_bind(inputs: Inputs) -> Iterator[str]:
    for name in ("beamops_ready_path", "beamops_live_path"):
        path = inputs.get(name, "/")
        if not isinstance(path, str) or not URL_PATH.fullmatch(path):
            yield f"{name}: got {shown(path)}; expected an absolute URL path such as /health/ready"
    bind = inputs.get("beamops_proxy_bind", "0.0.0.0")
    try:
        ipaddress.IPv4Address(str(bind))
    except ValueError:
        yield f"beamops_proxy_bind: got {shown(bind)}; expected an IPv4 address such as 0.0.0.0"


@rule(
    "Resource limits",
    "Each empty (no limit) or: "
    + ", ".join(f"`{name}` {what}" for name, _unused, what in LIMIT_PATTERNS)
    + ". Written into the unit and vm.args as they are, so nothing else passes.",
)
def _check_limits(inputs: Inputs) -> Iterator[str]:
    for name, pattern, what in LIMIT_PATTERNS:
        value = inputs.get(name, "")
        if value in ("", None):
            continue
        if not isinstance(value, str) or not pattern.fullmatch(value):
            yield f"{name}: got {shown(value)}; expected empty or {what}"


NETWORK_LISTS = ("beamops_proxy_trusted_proxies", "beamops_ip_allow")


@rule(
    "Trusted proxies and allowed addresses",
    "`beamops_proxy_trusted_proxies` and `beamops_ip_allow`: lists of IP networks or addresses "
    "(`10.0.0.0/8`, `192.0.2.7`, `2001:db8::/32`).",
)
def _check_networks(inputs: Inputs) -> Iterator[str]:
    for name in NETWORK_LISTS:
        networks = inputs.get(name, [])
        if not isinstance(networks, (list, tuple)):
            yield f"{name}: got {shown(networks)}; expected a list of networks"
            continue
        for network in networks:
            try:
                ipaddress.ip_network(str(network), strict=False)
            except ValueError:
                yield f"{name}: {shown(network)} is not an IP network or address"


@rule(
    "Numbers and their ranges",
    "Counts and durations within their ranges: "
    + ", ".join(
        f"`{name}` {'≥' if low_ok else '>'} {_number(low)}"
        + (f" and ≤ {_number(high)}" if high else "")
        for name, (low, low_ok, high) in NUMBERS.items()
    )
    + ".",
)
def _check_numbers(inputs: Inputs) -> Iterator[str]:
    for name, (low, low_ok, high) in NUMBERS.items():
        if not inputs.has(name):
            continue
        value = inputs.get(name)
        try:
            number = float(value)  # type: ignore[arg-type]  # anything else: ValueError
        except (TypeError, ValueError):
            yield f"{name}: got {shown(value)}; expected a number"
            continue
        if isinstance(value, bool) or number < low or (number == low and not low_ok):
            least = "at least" if low_ok else "more than"
            yield f"{name}: got {shown(value)}; expected {least} {_number(low)}"
        elif high is not None and number > high:
            yield f"{name}: got {shown(value)}; expected at most {_number(high)}"


@rule(
    "Erlang cookie",
    f"With distribution (`beamops_release_distribution` `sname` or `name`), "
    f"`beamops_release_cookie` has at least {COOKIE_MIN_LENGTH} printable ASCII characters, "
    f"no space, and at least {COOKIE_MIN_DISTINCT} different ones. Its value is never shown.",
)
def _check_cookie(inputs: Inputs) -> Iterator[str]:
    if inputs.get("beamops_release_distribution", "sname") == "none":
        return
    cookie = inputs.get("beamops_release_cookie", "")
    if not isinstance(cookie, str) or len(cookie) < COOKIE_MIN_LENGTH:
        yield (
            f"beamops_release_cookie: expected at least {COOKIE_MIN_LENGTH} characters (from "
            "ansible-vault), because beamops_release_distribution is not none"
        )
    elif not all("!" <= c <= "~" for c in cookie):
        yield "beamops_release_cookie: expected printable ASCII without spaces"
    elif len(set(cookie)) < COOKIE_MIN_DISTINCT:
        yield (
            f"beamops_release_cookie: too weak: expected at least {COOKIE_MIN_DISTINCT} "
            "different characters (e.g. openssl rand -base64 32)"
        )


@rule(
    "Example secrets",
    "No secret (`beamops_release_cookie`, a value of `beamops_secret_env`) is one of the "
    "examples shipped in `inventories/` (anyone can read them), unless "
    "`beamops_allow_example_secrets` is true, as in the demo inventory only.",
)
def _check_example_secrets(inputs: Inputs) -> Iterator[str]:
    if inputs.get("beamops_allow_example_secrets", False):
        return
    secrets = [("beamops_release_cookie", inputs.get("beamops_release_cookie"))]
    env = inputs.get("beamops_secret_env", {})
    if isinstance(env, Mapping):
        secrets += [(f"beamops_secret_env.{name}", value) for name, value in env.items()]
    for name, value in secrets:
        if isinstance(value, str) and fingerprint(value) in EXAMPLE_SECRETS:
            yield (
                f"{name} is an example secret shipped with beamops.release (public); generate "
                "your own and keep it in ansible-vault"
            )
