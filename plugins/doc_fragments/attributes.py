# Copyright: contributors to beamops.release
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The attributes every module of the collection shares; a module overrides one by naming it."""

from __future__ import annotations


class ModuleDocFragment:
    # Modules that run on the managed host.
    DOCUMENTATION = r"""
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
  platform:
    platforms: posix
"""

    # Modules backed by an action plugin of the collection (it runs on the controller).
    ACTION_PLUGIN = r"""
attributes:
  action:
    support: full
  async:
    support: none
  bypass_host_loop:
    support: none
"""
