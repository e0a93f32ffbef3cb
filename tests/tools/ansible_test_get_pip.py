"""Offline stand-in for the get-pip script ansible-test downloads to bootstrap pip in the
virtual environments of `ansible-test sanity --venv` (its host, ci-files.testing.ansible.com,
is out of reach here): pip from the standard library's ensurepip, then the pip version
ansible-test asks for, from the package index pip is configured with.

tests/lint/test_sanity.py puts it where ansible-test looks for its cached copy.
"""

from __future__ import annotations

import ensurepip
import os
import subprocess
import sys

# get-pip options that ensurepip's pip does not know; setuptools and wheel are left out anyway.
IGNORED = ("--no-setuptools", "--no-wheel")


def main(argv: list[str]) -> int:
    # ensurepip runs pip with PIP_CONFIG_FILE=/dev/null; the install below needs the real one.
    environment = dict(os.environ)
    ensurepip.bootstrap(upgrade=False)
    wanted = [arg for arg in argv if arg not in IGNORED]
    command = [sys.executable, "-m", "pip", "install", "--quiet", *wanted]
    return subprocess.call(command, env=environment)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
