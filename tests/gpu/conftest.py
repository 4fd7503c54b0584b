"""GPU-only tests: everything here is marked ``cuda`` and skipped where torch sees no GPU.

A GPU box often has the repository but not the fixtures beside it: there the tests that read
them skip (saying so) and the fixture-free ones still run.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.conftest import fixtures_root


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "tests/gpu/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.cuda)
            if not torch.cuda.is_available():
                item.add_marker(skip)


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    try:
        return fixtures_root()
    except pytest.fail.Exception as e:
        pytest.skip(f"no fixtures on this machine: {e}")
