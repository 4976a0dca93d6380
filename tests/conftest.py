"""Shared pytest fixtures.

The fixtures written by the original UC2/UNITER code live in ``../shared/fixtures/uc2_original`` next to
the checkout (or wherever ``UC2_FIXTURES`` points); tests that need them are skipped with a clear message
when the folder is absent.
"""
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parents[1]
# Subprocess tests run scripts/*.py directly. `make setup` installs the project (pip install -e .); a bare
# checkout's tests put the repository on the children's import path instead, as pytest.ini does for pytest.
os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])


def _fixture_root() -> Path:
    env = os.environ.get("UC2_FIXTURES")
    if env:
        return Path(env)
    return REPO_ROOT.parent / "shared" / "fixtures" / "uc2_original"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def orig_fixtures() -> Path:
    """Folder of files written by the original UC2 code; skips the test when it is missing."""
    root = _fixture_root()
    if not root.is_dir():
        pytest.skip(f"original-UC2 fixtures not found at {root} (set UC2_FIXTURES to their folder)")
    return root
