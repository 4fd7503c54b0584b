"""Locating and reading checkpoints: hub id or local directory, config.json, safetensors.

Shared by the TTS model and the codec. Only safetensors are read (never pickle).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from moss_pipecat._log import logger
from moss_pipecat.errors import CheckpointError, ConfigMismatchError

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


def resolve_checkpoint(
    repo_or_path: str | os.PathLike,
    *,
    revision: str | None = None,
    allow_patterns: Iterable[str] = ("*.json", "*.safetensors", "*.txt", "*.model"),
) -> Path:
    """Returns a local directory holding the checkpoint.

    A path that exists is used as is. Anything else is treated as a Hugging Face hub id and
    downloaded through huggingface_hub (its cache and progress bars), so a second call is
    free.
    """
    path = Path(repo_or_path).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise CheckpointError(f"{path} is a file; expected a checkpoint directory")
    name = str(repo_or_path)
    if name.startswith((".", "/", "~")) or name.count("/") != 1:
        raise CheckpointError(f"checkpoint directory {name!r} does not exist")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    logger.info(f"Fetching {name} from the Hugging Face hub (cached after the first time)")
    try:
        local = snapshot_download(
            repo_id=name, revision=revision, allow_patterns=list(allow_patterns)
        )
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError, ValueError) as e:
        raise CheckpointError(f"could not download {name!r} from the hub: {e}") from e
    return Path(local)


def read_config(directory: Path) -> dict:
    """Reads ``config.json`` of a checkpoint directory."""
    f = directory / "config.json"
    if not f.is_file():
        raise CheckpointError(f"{directory} has no config.json")
    try:
        return json.loads(f.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{f} is not valid JSON: {e}") from e


def weight_files(directory: Path) -> list[Path]:
    """The safetensors files of a checkpoint: one file, or the shards named by the index."""
    single = directory / SINGLE_FILE
    index = directory / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise CheckpointError(f"{index} is not a valid safetensors index: {e}") from e
        files = [directory / name for name in sorted(set(weight_map.values()))]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise CheckpointError(f"{directory} is missing shards {missing}")
        return files
    if single.is_file():
        return [single]
    raise CheckpointError(f"{directory} has neither {SINGLE_FILE} nor {INDEX_FILE}")


def load_state_dict(directory: Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Loads every tensor of a (possibly sharded) safetensors checkpoint."""
    state: dict[str, torch.Tensor] = {}
    for f in weight_files(directory):
        try:
            part = load_file(f, device=str(device))
        except (SafetensorError, OSError, RuntimeError) as e:
            raise CheckpointError(f"cannot read {f}: {e}") from e
        state.update(part)
    return state


def check_keys(
    expected: Mapping[str, torch.Size],
    state: Mapping[str, torch.Tensor],
    ignored: Mapping[str, str],
) -> None:
    """Raises ``ConfigMismatchError`` unless ``state`` has exactly the expected keys and shapes.

    Args:
        expected: parameter name -> shape the module needs.
        state: the checkpoint's tensors (after renaming).
        ignored: checkpoint keys deliberately not loaded -> why (documented, never silent).
    """
    missing = sorted(k for k in expected if k not in state)
    unexpected = sorted(k for k in state if k not in expected and k not in ignored)
    wrong = sorted(
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k])}"
        for k in expected
        if k in state and tuple(state[k].shape) != tuple(expected[k])
    )
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing (e.g. {missing[:3]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})")
    if wrong:
        problems.append(f"{len(wrong)} with wrong shapes (e.g. {wrong[:3]})")
    if problems:
        raise ConfigMismatchError("checkpoint does not match config: " + "; ".join(problems))
