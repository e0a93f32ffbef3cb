# Copyright: contributors to beamops.release
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Which slot the host's proxy routes to, read from the file that proxy routes by.

The proxy is the truth about what serves: a run killed between the switch and the state write
leaves the proxy on the new slot and the state on the old one. The release state compares both
(``release_state`` with ``routing``) and follows the proxy, and a cutover refuses to restart the
slot the proxy routes to.

Pure standard library, Python 3.8+.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping, Optional

SLOTS = ("blue", "green")
NGINX_MARK = "# live slot: "


@dataclasses.dataclass
class Routing:
    proxy: str  # nginx or haproxy
    app: str
    nginx_upstream_file: str
    haproxy_map_file: str
    slots_dir: str  # <base_dir>/slots: one link per slot to the release it runs


def routing_from(raw: Optional[Mapping[str, Any]]) -> Optional[Routing]:
    if not raw:
        return None
    fields = {f.name for f in dataclasses.fields(Routing)}
    missing = sorted(fields - set(raw))
    if missing:
        raise ValueError(f"routing needs {', '.join(missing)}")
    return Routing(**{name: str(raw[name]) for name in fields})


def nginx_live_slot(upstream_file: str) -> Optional[str]:
    """The slot named by the upstream file slot_cutover writes (`# live slot: <slot>; ...`)."""
    try:
        with open(upstream_file, encoding="utf-8") as handle:
            for line in handle:
                if line.startswith(NGINX_MARK):
                    slot = line[len(NGINX_MARK) :].split(";")[0].strip()
                    return slot if slot in SLOTS else None
    except OSError:
        return None
    return None


def haproxy_live_slot(map_file: str, app: str) -> Optional[str]:
    """The slot of the `live <app>_<slot>` entry of the HAProxy map file."""
    try:
        with open(map_file, encoding="utf-8") as handle:
            for line in handle:
                key, _unused, value = line.strip().partition(" ")
                if key == "live" and value.strip().startswith(f"{app}_"):
                    slot = value.strip()[len(app) + 1 :]
                    return slot if slot in SLOTS else None
    except OSError:
        return None
    return None


def routed_slot(routing: Routing) -> Optional[str]:
    if routing.proxy == "haproxy":
        return haproxy_live_slot(routing.haproxy_map_file, routing.app)
    return nginx_live_slot(routing.nginx_upstream_file)


def slot_version(routing: Routing, slot: str) -> Optional[str]:
    """The release the slot's link points to (releases/<version>), if any."""
    try:
        target = os.readlink(os.path.join(routing.slots_dir, slot))
    except OSError:
        return None
    return os.path.basename(target.rstrip("/")) or None
