"""Engine and server settings as one options model, shared by ``moss-pipecat serve`` and the
Ray Serve app (``ray_app.build_app``): the same names, defaults, checks and policy in both.

Values may come as strings (Ray's ``serve run ... key=value``); pydantic converts them. The
bearer token and the resume key are never options: they come from ``$MOSS_PIPECAT_TOKEN`` or
``token_file`` and ``$MOSS_PIPECAT_RESUME_KEY`` or ``resume_key_file`` (argv is readable by
every local user).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator, model_validator

from moss_pipecat.server.config import (
    DEPRECATED_TEXT_CHARS,
    RESUME_KEY_ENV,
    TOKEN_ENV,
    ServerConfig,
    ServerLimits,
    option_limits,
)


def parse_pools(value: str | Sequence[Any]) -> tuple[tuple[int, int], ...]:
    """KV pools from ``"128x2048,24x8192"`` / ``["128x2048", ...]`` or ((slots, capacity), ...)."""
    items = value.replace(",", " ").split() if isinstance(value, str) else list(value)
    try:
        pairs = [v.lower().split("x") if isinstance(v, str) else v for v in items]
        pools = tuple((int(n), int(c)) for n, c in pairs)
    except (TypeError, ValueError):
        raise ValueError(f"kv_pools must be SLOTSxCAPACITY items, got {value!r}") from None
    if not pools or any(n < 1 or c < 1 for n, c in pools):
        raise ValueError(f"kv_pools need positive slots and capacities, got {value!r}")
    return pools


class EngineOptions(BaseModel):
    """Which engine to load and how it is shaped.

    Policy: ``kv_pools`` set ``max_sessions`` (their slots) and ``max_context`` (the largest
    capacity; either given as well must agree); a ``max_context`` without an explicit
    ``context_budget`` gets ``min(30000, 0.9 * max_context)``, and a budget without
    ``turn_reserve`` gets ``min(2000, budget // 4)``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    model: str | None = Field(None, description="hub id or directory of MOSS-TTS-Realtime")
    tiny: str | None = Field(None, description="serve the tiny test fixtures in this directory")
    codec: str | None = Field(None, description="hub id or directory of the audio codec")
    no_codec: bool = Field(False, description="serve codes only (no PCM)")
    device: str | None = Field(None, description="cuda / cpu (default: cuda if available)")
    dtype: Literal["bfloat16", "float16", "float32"] | None = None
    max_sessions: int | None = Field(None, ge=1, description="conversations held at once")
    max_context: int | None = Field(None, ge=16, description="KV positions per session")
    context_budget: int | None = Field(None, ge=1)
    turn_reserve: int | None = Field(None, ge=1)
    kv_pools: tuple[tuple[int, int], ...] | None = None
    lookahead_s: float = Field(1.0, ge=0, description="generation ahead of real time (0: off)")
    max_text_chars: int | None = Field(
        None, ge=1, description="characters of one reply's text (default: the engine's)"
    )
    graphs: Literal["auto", "on", "off"] = "auto"
    compile: str | None = Field(None, description="torch.compile backend of the graphed step")
    fused: Literal["auto", "on", "off"] = Field(
        "auto", description="the model's and codec's fused ops (auto: on CUDA with Triton)"
    )
    kernel_cache_dir: str | None = Field(
        None, description="compiled kernels kept here across restarts (None: their defaults)"
    )
    # None: the engine's default (0 / False), but with ``tiny`` the stand-in's rules
    # (``TINY_ENGINE_CONFIG``): its random weights may end a reply on EOS at once.
    eos_min_frames: int | None = Field(
        None, ge=0, description="a turn's first N frames never end it (EOS masked)"
    )
    eos_after_text: bool | None = Field(
        None, description="EOS masked until a turn's whole text has been fed"
    )
    prefix_cache_mib: float | None = Field(
        None, ge=0, description="prompt prefix cache size (None: the engine's default; 0: off)"
    )
    frame_deadline_ms: float | None = Field(
        None, gt=0, description="pace prefill and refuse new conversations for this deadline"
    )
    cost_table: str | None = Field(
        None, description="gpu_bench.sh folder (or saved table) the cost model starts from"
    )

    @field_validator("kv_pools", mode="before")
    @classmethod
    def _pools(cls, value: Any) -> Any:
        return None if value is None else parse_pools(value)

    @field_validator("graphs", mode="before")
    @classmethod
    def _graphs(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _one_source(self) -> EngineOptions:
        if self.model and self.tiny:
            raise ValueError("give model or tiny, not both")
        return self

    @model_validator(mode="after")
    def _pools_agree(self) -> EngineOptions:
        # The pools decide both; a value given beside them that says otherwise is a mistake
        # to name, not one to overrule in silence.
        if self.kv_pools:
            slots, largest = sum(n for n, _ in self.kv_pools), max(c for _, c in self.kv_pools)
            for name, given, theirs in (
                ("max_sessions", self.max_sessions, slots),
                ("max_context", self.max_context, largest),
            ):
                if given is not None and given != theirs:
                    raise ValueError(
                        f"{name} {given} disagrees with kv_pools ({theirs}): give one or both alike"
                    )
        return self

    def engine_config(self) -> Any:
        """The ``EngineConfig`` these options describe."""
        from moss_pipecat.engine.config import EngineConfig

        kw: dict[str, Any] = {
            "lookahead_s": self.lookahead_s or None,  # 0: unpaced
            "graphed_decode": {"auto": None, "on": True, "off": False}[self.graphs],
            "compile_decode": self.compile,
            "fused": {"auto": None, "on": True, "off": False}[self.fused],
            "kernel_cache_dir": self.kernel_cache_dir,
        }
        kw.update(self._eos_rules())
        if self.max_text_chars is not None:
            kw["max_text_chars"] = self.max_text_chars
        if self.frame_deadline_ms is not None:
            kw["frame_deadline_s"] = self.frame_deadline_ms / 1e3
        kw["cost_table"] = self.cost_table
        if self.prefix_cache_mib is not None:
            kw["prefix_cache_bytes"] = int(self.prefix_cache_mib * 2**20)
        if self.max_sessions is not None:
            kw["max_sessions"] = self.max_sessions
        if self.kv_pools:
            kw["kv_pools"] = self.kv_pools
            kw["max_sessions"] = sum(n for n, _ in self.kv_pools)
            kw["max_context"] = max(c for _, c in self.kv_pools)
        elif self.max_context is not None:
            kw["max_context"] = self.max_context
        budget = self.context_budget
        if budget is None and "max_context" in kw:
            budget = min(30000, int(kw["max_context"] * 0.9))
        if budget is not None:
            kw["context_budget"] = budget
            kw["turn_reserve"] = self.turn_reserve or min(2000, budget // 4)
        elif self.turn_reserve is not None:
            kw["turn_reserve"] = self.turn_reserve
        return EngineConfig(**kw)

    def _eos_rules(self) -> dict[str, Any]:
        """The EOS rules given, the rest from the engine's defaults or, for the tiny fixtures,
        from the stand-in's (the rules the in-process agents and the demo use)."""
        given = {"eos_min_frames": self.eos_min_frames, "eos_after_text": self.eos_after_text}
        if self.tiny:
            from moss_pipecat.engine.factory import TINY_ENGINE_CONFIG

            defaults = {k: getattr(TINY_ENGINE_CONFIG, k) for k in given}
            given = {k: defaults[k] if v is None else v for k, v in given.items()}
        return {k: v for k, v in given.items() if v is not None}

    def load_engine(self) -> Any:
        """Loads and starts the engine (tiny fixtures or a real checkpoint)."""
        import torch

        from moss_pipecat.engine import factory

        config = self.engine_config()
        if self.tiny:
            return factory.load_tiny_engine(
                self.tiny, config=config, with_codec=not self.no_codec, device=self.device or "cpu"
            )
        codec = None if self.no_codec else (self.codec or factory.DEFAULT_CODEC)
        dtype = getattr(torch, self.dtype) if self.dtype else None
        return factory.load_engine(
            self.model or factory.DEFAULT_MODEL,
            codec,
            device=self.device,
            dtype=dtype,
            config=config,
        )


def _secret(what: str, path: str | None, env: str, default: str | None = None) -> str | None:
    """A secret never on argv: ``path``'s content (stripped; an empty file is an error), else
    ``$env``, else ``default``."""
    if path:
        value = Path(path).read_text().strip()
        if not value:
            raise ValueError(f"{what} file {path} is empty")
        return value
    return os.environ.get(env) or default


class _ServerSettings(BaseModel):
    """Where the server listens, TLS, and where the token comes from (``ServerOptions`` adds
    the limits)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field("127.0.0.1", description="bind address (default: loopback only)")
    port: int = Field(8765, ge=0, le=65535, description="TCP port (0: any free port)")
    token_file: str | None = Field(None, description="file holding the bearer token")
    resume_key_file: str | None = Field(
        None, description="file holding the resume key the servers of a deployment share"
    )
    ssl_certfile: str | None = Field(None, description="PEM certificate chain: serve wss://")
    ssl_keyfile: str | None = Field(None, description="PEM private key of the certificate")
    max_text_chars: int | None = Field(
        None, ge=1, description="deprecated as the transcript's limit: max_transcript_chars"
    )

    @model_validator(mode="after")
    def _tls_pair(self) -> _ServerSettings:
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ValueError("TLS needs both ssl_certfile and ssl_keyfile")
        return self

    def token(self) -> str | None:
        """The bearer token: ``token_file``'s content, else ``$MOSS_PIPECAT_TOKEN``."""
        return _secret("token", self.token_file, TOKEN_ENV)

    def resume_key(self, default: str | None = None) -> str | None:
        """The resume key (``ServerConfig.resume_key``): ``resume_key_file``'s content, else
        ``$MOSS_PIPECAT_RESUME_KEY``, else ``default`` (None: one drawn per process)."""
        return _secret("resume key", self.resume_key_file, RESUME_KEY_ENV, default)

    def limits(self) -> ServerLimits:
        values = {f.name: getattr(self, f.name) for f in option_limits()}
        if self.max_text_chars is not None and "max_transcript_chars" not in self.model_fields_set:
            # The old option limited the reply text and the transcript both: it still does.
            warnings.warn(DEPRECATED_TEXT_CHARS, DeprecationWarning, stacklevel=2)
            values["max_transcript_chars"] = self.max_text_chars
        return ServerLimits(**values)

    def server_config(self, default_resume_key: str | None = None) -> ServerConfig:
        """The server's config; ``default_resume_key``: the key when none is configured."""
        return ServerConfig(
            host=self.host,
            port=self.port,
            token=self.token(),
            resume_key=self.resume_key(default_resume_key),
            limits=self.limits(),
            ssl_certfile=self.ssl_certfile,
            ssl_keyfile=self.ssl_keyfile,
        )


def _limit_option(f: Any) -> tuple[type, Any]:
    m = f.metadata
    return type(f.default), Field(f.default, ge=m["ge"], gt=m["gt"], description=m["what"])


# The per-client limits are the rows of ``ServerLimits`` (its defaults and bounds), not restated.
ServerOptions = create_model(
    "ServerOptions",
    __base__=_ServerSettings,
    __doc__="Where the server listens, TLS, where the token comes from, and the per-client "
    "limits (the option rows of ``ServerLimits``).",
    __module__=__name__,
    **{f.name: _limit_option(f) for f in option_limits()},
)


def describe_option_error(error: Exception) -> str:
    """One line for a bad option: pydantic's errors as ``field: message``, others as they are
    (what ``moss-pipecat serve`` prints and the Ray app raises)."""
    from pydantic import ValidationError

    if not isinstance(error, ValidationError):
        return str(error)
    parts = []
    for e in error.errors():
        where = ".".join(str(x) for x in e["loc"])
        what = e["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {what}" if where else what)
    return "; ".join(parts)


def split_options(values: dict[str, Any], *models: type[BaseModel]) -> list[dict[str, Any]]:
    """Splits flat ``values`` by the models' field names (a name may feed several models);
    unknown names raise ``ValueError``. None values are left out (the model's default)."""
    out: list[dict[str, Any]] = [{} for _ in models]
    unknown = set(values)
    for i, model in enumerate(models):
        for name in model.model_fields:
            if name in values:
                unknown.discard(name)
                if values[name] is not None:
                    out[i][name] = values[name]
    if unknown:
        raise ValueError(f"unknown options: {', '.join(sorted(unknown))}")
    return out
