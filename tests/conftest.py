"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def benchmarks_dir() -> Path:
    """The shared benchmark files: $RLREASON_BENCHMARKS_DIR, else <repo>/../shared/benchmarks."""
    env = os.environ.get("RLREASON_BENCHMARKS_DIR")
    path = Path(env) if env else (REPO_ROOT / ".." / "shared" / "benchmarks").resolve()
    if not path.is_dir():
        pytest.skip(f"benchmarks directory not found: {path}")
    return path
