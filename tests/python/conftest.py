"""pytest set-up for the Python module's tests: imports `corelocker` from the build folder
(CORELOCKER_BUILD_DIR, default <repo>/build; the README's set-up builds it there) and runs the
command-line tool beside it. Run with Debian's python3:

    PYTHONPATH=build/python /usr/bin/python3 -m pytest -q tests/python
"""
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
BUILD = pathlib.Path(os.environ.get("CORELOCKER_BUILD_DIR", ROOT / "build")).resolve()
if str(BUILD / "python") not in sys.path:
    sys.path.insert(0, str(BUILD / "python"))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))  # nets.py

CLI = BUILD / "corelocker"


class Cli:
    """Runs build/corelocker; `run` fails the test on a non-zero exit unless `expect` says so."""

    def run(self, *args, expect=0):
        if not CLI.exists():
            pytest.fail(f"{CLI} is missing: build the project first (scripts/setup.sh)")
        p = subprocess.run([str(CLI), *map(str, args)], capture_output=True, text=True, timeout=300)
        if p.returncode != expect:
            pytest.fail(f"corelocker {' '.join(map(str, args))}: exit {p.returncode}, expected {expect}\n"
                        f"stdout: {p.stdout}\nstderr: {p.stderr}")
        return p

    def fingerprint(self, path):
        return self.run("fingerprint", path).stdout.strip()


@pytest.fixture
def cli():
    return Cli()
