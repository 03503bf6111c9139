"""Which code the children run: the working tree, or one commit extracted read-only.

``--commit REV`` lets a long benchmark run while others edit the tree: the commit is extracted with
``git archive`` (which does not touch the repository) into benchmarks/.cache/src-SHA/, and every
child imports ``pipeline`` and ``aisthetics_transforms`` from there (their cwd, first on PYTHONPATH).
"""

from __future__ import annotations

import compileall
import shutil
import subprocess
import sys
from pathlib import Path

from . import CACHE, REPO


def git(*args: str) -> str:
    # rstrip only: a porcelain status line starts with a space when the index is clean.
    return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, check=True).stdout.rstrip()


def checkout(commit: str | None = None) -> dict:
    """Put the code under test first on this process's ``sys.path`` and describe it; ``source`` is
    the folder children run from (pass it to :func:`harness.process.child_env`)."""
    if not commit:
        try:
            head = git("rev-parse", "HEAD")
            dirty = [
                line[3:] for line in git("status", "--porcelain").splitlines() if not line[3:].startswith("benchmarks/")
            ]
        except (OSError, subprocess.CalledProcessError):  # not a git checkout
            head, dirty = "unknown", []
        info = {"source": str(REPO), "commit": head, "working_tree": True, "uncommitted_changes": dirty}
    else:
        sha = git("rev-parse", "--verify", f"{commit}^{{commit}}")
        target = CACHE / f"src-{sha[:12]}"
        if not (target / "pipeline" / "__init__.py").exists():
            tmp = target.with_name(target.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            archive = subprocess.run(["git", "-C", str(REPO), "archive", sha], capture_output=True, check=True).stdout
            subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive, check=True)
            tmp.rename(target)
        info = {
            "source": str(target),
            "commit": sha,
            "working_tree": False,
            "requested": commit,
            "subject": git("log", "-1", "--format=%s", sha),
        }
    _compile(Path(info["source"]))
    sys.path.insert(0, info["source"])
    return info


def _compile(source: Path) -> None:
    """Write the bytecode of the code under test before anything is timed, as installing a
    package does: this sandbox sets PYTHONDONTWRITEBYTECODE=1, so every child would otherwise
    compile the package's modules again at start (~0.25 s of each run, measured), a cost no
    installed deployment pays. Children only read it, so the setting can stay."""
    for package in ("pipeline", "aisthetics_transforms"):
        compileall.compile_dir(source / package, quiet=1)


def source_of(info: dict) -> Path:
    return Path(info["source"])


def code_line(info: dict) -> str:
    if info["working_tree"]:
        dirty = info["uncommitted_changes"]
        return f"Code: the working tree at {info['commit'][:12]}" + (
            f", with uncommitted changes to {', '.join(dirty)}." if dirty else ", clean."
        )
    return f"Code: commit {info['commit'][:12]} ({info['subject']}), extracted with `git archive`."
