#!/usr/bin/python
# Copyright: contributors to beamops.release
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Documentation of the release_artifact action (it runs on the controller only)."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: release_artifact
short_description: Check a release tarball on the controller before any host is touched
version_added: "0.2.0"
author:
  - beamops.release maintainers (@beamops)
description:
  - Runs on the controller only, inside Ansible itself (no module is sent to a host).
  - For a local O(src), checks that the file exists and has the sha256 O(sha256). For an
    http(s) URL, downloads it once into O(cache_dir) (kept when its sha256 already matches),
    renaming the download into place only when its sha256 matches.
  - Then reads every member of the tarball, without unpacking it, and refuses one that would
    land outside the release (absolute path, C(..), a link pointing out), a device, FIFO or
    other special file, or a tarball without C(bin/<app>).
  - Every refusal names the variable (C(beamops_release_src), C(beamops_release_sha256)) and
    says that no host was changed.
options:
  src:
    description: Path of the tarball on the controller, or an http(s) URL.
    type: str
    required: true
  sha256:
    description: Expected sha256 of the tarball (64 hex digits).
    type: str
    required: true
  app:
    description: The release's name; the tarball must hold C(bin/<app>).
    type: str
    required: true
  version:
    description: The release's version; names the cached download.
    type: str
    required: true
  cache_dir:
    description: Where URL downloads are kept on the controller.
    type: path
    default: ~/.cache/beamops.release
  timeout:
    description: Timeout in seconds of a URL download.
    type: int
    default: 120
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - ansible.builtin.action_common_attributes.flow
  - beamops.release.attributes
  - beamops.release.attributes.action_plugin
attributes:
  check_mode:
    support: full
    details: Reads only; a URL is still downloaded into the controller's cache.
"""

EXAMPLES = r"""
- name: Check the tarball once, on the controller
  beamops.release.release_artifact:
    src: dist/sample_app-0.2.0.tar.gz
    sha256: "{{ lookup('file', 'dist/sample_app-0.2.0.tar.gz.sha256').split()[0] }}"
    app: sample_app
    version: 0.2.0
  run_once: true
  register: artifact
"""

RETURN = r"""
path:
  description: The checked tarball on the controller (the cached download for a URL).
  returned: success
  type: str
sha256:
  description: Its sha256, lower case.
  returned: success
  type: str
downloaded:
  description: Whether this task downloaded it.
  returned: success
  type: bool
members:
  description: How many members the tarball has.
  returned: success
  type: int
"""
