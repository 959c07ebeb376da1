"""Fixtures for the Python package's tests: the bundled model, the repository's goldens (made by
transformers: scripts/make_fixtures.py, scripts/make_scoring_goldens.py) and the CLI binary.

`cargo xtask test` builds and installs the package, then runs these with NEXTTOKEN_BIN set to its
own `nexttoken` and NEXTTOKEN_REQUIRE_ALL=1, under which a missing tool fails instead of skipping.
"""

import json
import os
import shutil
from pathlib import Path

import pytest

import nexttoken

ROOT = Path(__file__).resolve().parents[3]
GOLDENS = ROOT / "tests" / "goldens"


def missing(reason: str):
    """Skips a test that needs something not here, or fails it where everything must run."""
    if os.environ.get("NEXTTOKEN_REQUIRE_ALL") == "1":
        pytest.fail(f"{reason} (NEXTTOKEN_REQUIRE_ALL=1)")
    pytest.skip(reason)


def golden(relative: str):
    return json.loads((GOLDENS / relative).read_text())


@pytest.fixture(scope="session")
def model() -> nexttoken.Model:
    return nexttoken.Model.load(threads=2)


@pytest.fixture(scope="session")
def cli() -> Path:
    """The `nexttoken` command: NEXTTOKEN_BIN, a release build in the target folder, or PATH's."""
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    for candidate in [os.environ.get("NEXTTOKEN_BIN"), target / "release" / "nexttoken",
                      shutil.which("nexttoken")]:
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    missing("no nexttoken binary: set NEXTTOKEN_BIN or run `cargo build --release -p nexttoken-cli`")
