"""Provenance for result rows: package versions and the git revision of the harness."""

from __future__ import annotations

import functools
import json
import subprocess
from importlib import metadata

from bench.core.settings import PROJECT_ROOT

_PACKAGES = ("backdoor-leaderboard", "torch", "torchvision", "numpy", "ray")


@functools.cache
def package_versions() -> str:
    found = {}
    for name in _PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "absent"
    return json.dumps(found, sort_keys=True)


@functools.cache
def git_revision() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(PROJECT_ROOT), "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
        dirty = subprocess.run(
            # results/ is generated output (its table is committed): a run writing it does not
            # make the code that produced the rows uncommitted
            [
                "git",
                "-C",
                str(PROJECT_ROOT),
                "status",
                "--porcelain",
                "--untracked-files=no",
                "--",
                ".",
                ":(exclude)results",
            ],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
