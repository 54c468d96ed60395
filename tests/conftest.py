"""Shared test fixtures. `../shared` (beside the checkout) holds the published PiDiNet weights and the
reference fixture of the authors' implementation; tests that need it skip where it is absent."""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ZSHARM_SHARED", REPO.parent / "shared"))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip("../shared is absent")
    return SHARED


@pytest.fixture(scope="session")
def pidinet_dir(shared_dir) -> Path:
    path = shared_dir / "weights" / "pidinet"
    if not (path / "table5_pidinet-tiny.pth").is_file():
        pytest.skip("published PiDiNet weights are absent")
    return path


@pytest.fixture(scope="session")
def reference_dir(shared_dir) -> Path:
    path = shared_dir / "reference"
    if not (path / "golden_steps10" / "arrays.npz").is_file():
        pytest.skip("the reference fixture is absent")
    return path
