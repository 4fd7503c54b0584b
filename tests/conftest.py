"""Shared pytest fixtures: where the conformance fixtures live.

The root is ``$MOSS_FIXTURES`` or ``../shared/fixtures/moss_tiny`` beside the repository, so the
same parity tests run against any fixture set with the same layout.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parent.parent
DEFAULT_FIXTURES = REPO.parent / "shared" / "fixtures" / "moss_tiny"


def fixtures_root() -> Path:
    root = Path(os.environ.get("MOSS_FIXTURES", DEFAULT_FIXTURES)).expanduser().resolve()
    if not (root / "realtime").is_dir() or not (root / "codec").is_dir():
        pytest.fail(f"fixture root {root} lacks realtime/ and codec/ (set MOSS_FIXTURES)")
    return root


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return fixtures_root()


@pytest.fixture(scope="session")
def realtime_dir(fixtures_dir: Path) -> Path:
    return fixtures_dir / "realtime"


@pytest.fixture(scope="session")
def codec_dir(fixtures_dir: Path) -> Path:
    return fixtures_dir / "codec"


@pytest.fixture(scope="session")
def realtime_golden(realtime_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(realtime_dir / "golden.safetensors")


@pytest.fixture(scope="session")
def realtime_meta(realtime_dir: Path) -> dict:
    return json.loads((realtime_dir / "golden.json").read_text())


@pytest.fixture(scope="session")
def codec_golden(codec_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(codec_dir / "golden.safetensors")


@pytest.fixture(scope="session")
def codec_meta(codec_dir: Path) -> dict:
    return json.loads((codec_dir / "golden.json").read_text())
