from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    "The shared data folder beside the repository (CI has it; a bare clone may not)."
    if not SHARED.exists():
        pytest.skip(f"{SHARED} is not beside the repository")
    return SHARED
