"""Where the shared real slides live (../shared/data beside the project, as in CI)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MRAN_SHARED_DATA", ROOT.parent / "shared" / "data"))


def shared(rel: str) -> Path:
    p = SHARED_DATA / rel
    if not p.exists():
        pytest.skip(f"shared test data not found: {p}")
    return p
