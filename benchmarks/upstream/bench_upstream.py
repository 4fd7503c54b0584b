"""Optional: our decode step side by side with the upstream reference implementation.

Runs against YOUR OWN checkout of https://github.com/OpenMOSS/MOSS-TTS: the script puts its
``moss_tts_realtime/`` folder on ``sys.path`` at run time and drives upstream's own classes
(nothing of upstream is copied into this repository). With the same weights in both models it

1. cross-checks correctness: greedy-decodes turn 1 and then turn 2 on top of it with upstream's
   per-frame path (``MossTTSRealtimeInference.prefill`` / ``.step``) and with ours
   (``MossTTSRealtime.prefill`` + ``decode_step``, eager and through ``GraphedDecodeStep``) and
   counts the frames that agree (identical on the tiny fixture in float32; the script exits 1
   there otherwise);
2. times one real-time step per batch size (one backbone row over the KV cache + a 16-code
   frame from the local transformer): upstream eager, our eager ``decode_step`` and our
   ``GraphedDecodeStep`` (CUDA graphs on a GPU; the same padded path run eagerly on CPU);
3. times a turn-2 prefill (the next turn's rows appended on top of turn 1's history, plus its
   first frame) in both.

Upstream pins ``transformers==5.0.0``; with later 5.x releases its local transformer fails
(e.g. 5.23: ``create_causal_mask() got an unexpected keyword argument 'input_embeds'``). Run the
script from an environment with transformers 5.0.0, e.g. a side venv that reuses this one:

    python -m venv /tmp/upstream-venv
    echo "import site; site.addsitedir('$PWD/.venv/lib/python3.11/site-packages')" \\
        > /tmp/upstream-venv/lib/python3.11/site-packages/zz_moss_pipecat.pth
    /tmp/upstream-venv/bin/pip install transformers==5.0.0
    /tmp/upstream-venv/bin/python benchmarks/upstream/bench_upstream.py \\
        --upstream-repo ~/src/MOSS-TTS

    ... --upstream-repo DIR                                  # tiny fixture model, CPU
    ... --upstream-repo DIR --checkpoint OpenMOSS-Team/MOSS-TTS-Realtime --device cuda \\
        --dtype bfloat16 --batch 1 4
    ... --upstream-repo DIR --real-size --random-weights --device cuda --dtype bfloat16
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import subprocess
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from moss_pipecat._log import logger
from moss_pipecat.model import (
    IGNORED_KEYS,
    BatchSampling,
    FrameHistory,
    MossTTSRealtime,
    MossTTSRealtimeConfig,
    SamplingParams,
)
from moss_pipecat.model.graphs import GraphedDecodeStep
from moss_pipecat.model.sampling import NoiseKeys

# The helpers shared by the benchmarks (benchmarks/_common.py, _setup.py) sit one folder up.
BENCHMARKS = Path(__file__).resolve().parent.parent
if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))
from _common import emit, environment, fixtures_root, time_calls  # noqa: E402
from _setup import DTYPES, build_model  # noqa: E402

# Where the realtime model lives in the upstream repository, and the modules we drive.
UPSTREAM_SUBDIR = "moss_tts_realtime"
UPSTREAM_PACKAGE = "mossttsrealtime"
UPSTREAM_MODULES = (
    "configuration_mossttsrealtime",
    "modeling_mossttsrealtime",
    "modeling_mossttsrealtime_local",
    "streaming_mossttsrealtime",
)
UPSTREAM_TRANSFORMERS_PIN = "5.0.0"  # upstream pyproject.toml, extra "torch-runtime"
DELAY_TOKENS = 12  # text tokens the audio lags behind (upstream's prefill text prefix length)
ENV_UPSTREAM = "MOSS_TTS_UPSTREAM"


class UpstreamError(RuntimeError):
    """The upstream checkout is missing, incomplete, or does not run in this environment."""


# ---- importing upstream ---------------------------------------------------------------------


@dataclass
class Upstream:
    """Upstream's classes, imported from the user's checkout."""

    root: Path  # the folder holding the ``mossttsrealtime`` package
    model_cls: type
    config_cls: type
    inference_cls: type


def find_upstream_package(repo: str | os.PathLike) -> Path:
    """The folder to put on ``sys.path`` so ``import mossttsrealtime`` finds upstream's package.

    Accepts the repository root or its ``moss_tts_realtime/`` folder.
    """
    repo = Path(repo).expanduser()
    if not repo.is_dir():
        raise UpstreamError(
            f"--upstream-repo {repo} is not a directory: pass a checkout of "
            "https://github.com/OpenMOSS/MOSS-TTS"
        )
    for root in (repo / UPSTREAM_SUBDIR, repo):
        pkg = root / UPSTREAM_PACKAGE
        if pkg.is_dir():
            missing = [m for m in UPSTREAM_MODULES if not (pkg / f"{m}.py").is_file()]
            if missing:
                raise UpstreamError(
                    f"{pkg} lacks {', '.join(m + '.py' for m in missing)}: not a MOSS-TTS "
                    "checkout this script knows (or an incompatible revision)"
                )
            return root.resolve()
    raise UpstreamError(
        f"{repo} does not contain {UPSTREAM_SUBDIR}/{UPSTREAM_PACKAGE}/ with "
        f"{', '.join(m + '.py' for m in UPSTREAM_MODULES)}: pass the root of a checkout of "
        "https://github.com/OpenMOSS/MOSS-TTS"
    )


def import_upstream(repo: str | os.PathLike) -> Upstream:
    root = find_upstream_package(repo)
    sys.path.insert(0, str(root))
    try:
        modeling = importlib.import_module(f"{UPSTREAM_PACKAGE}.modeling_mossttsrealtime")
        config = importlib.import_module(f"{UPSTREAM_PACKAGE}.configuration_mossttsrealtime")
        streaming = importlib.import_module(f"{UPSTREAM_PACKAGE}.streaming_mossttsrealtime")
        return Upstream(
            root=root,
            model_cls=modeling.MossTTSRealtime,
            config_cls=config.MossTTSRealtimeConfig,
            inference_cls=streaming.MossTTSRealtimeInference,
        )
    except (ImportError, AttributeError) as e:
        raise UpstreamError(
            f"cannot import upstream's realtime model from {root}: {e!r}. {_transformers_hint()}"
        ) from e


def _transformers_hint() -> str:
    import transformers

    return (
        f"Upstream pins transformers=={UPSTREAM_TRANSFORMERS_PIN}; this environment has "
        f"transformers {transformers.__version__} (see this script's docstring for a side venv)."
    )


def upstream_commit(root: Path) -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


# ---- same weights in both models ----------------------------------------------------------------


def upstream_config_dict(cfg: MossTTSRealtimeConfig) -> dict[str, Any]:
    """Our config as a ``config.json`` dict under upstream's key names.

    ``MossTTSRealtimeConfig.from_dict`` of the result gives ``cfg`` back; upstream's config class
    takes it as keyword arguments.
    """

    def stack(c, rope_type: str, extra: dict[str, Any]) -> dict[str, Any]:
        rope: dict[str, Any] = {"rope_type": rope_type, "rope_theta": c.rope_theta}
        if rope_type == "linear":
            rope["factor"] = c.rope_scaling_factor
        return {
            "hidden_size": c.hidden_size,
            "num_hidden_layers": c.num_hidden_layers,
            "num_attention_heads": c.num_attention_heads,
            "num_key_value_heads": c.num_key_value_heads,
            "head_dim": c.head_dim,
            "intermediate_size": c.intermediate_size,
            "rms_norm_eps": c.rms_norm_eps,
            "max_position_embeddings": c.max_position_embeddings,
            "rope_parameters": rope,
            **extra,
        }

    lang, local = cfg.language, cfg.local
    return {
        "model_type": "moss_tts_realtime",
        # Plain RoPE is "default" unless a scaling factor says otherwise.
        "language_config": stack(
            lang,
            "linear" if lang.rope_scaling_factor != 1.0 else "default",
            {"model_type": "qwen3", "vocab_size": lang.vocab_size},
        ),
        # Upstream's local config always uses "linear" RoPE (factor 1.0 = plain RoPE) and also
        # reads the flat rope_theta / rope_type keys.
        "local_config": stack(
            local,
            "linear",
            {"rope_theta": local.rope_theta, "rope_type": "linear", "rvq": cfg.rvq},
        ),
        "rvq": cfg.rvq,
        "audio_vocab_size": cfg.audio_vocab_size,
        "audio_pad_token": cfg.audio_pad_token,
        "text_pad": cfg.text_pad,
        "reference_audio_pad": cfg.reference_audio_pad,
    }


def check_handoff_keys(missing: list[str], unexpected: list[str]) -> None:
    """Our checkpoint state dict must fill every upstream parameter but the ignored ones."""
    missing = [k for k in missing if k not in IGNORED_KEYS]
    if missing or unexpected:
        raise UpstreamError(
            f"weight hand-off to upstream failed: missing {missing[:8]}, unexpected "
            f"{unexpected[:8]}"
        )


def resolve_attn(choice: str, device: torch.device, dtype: torch.dtype) -> str:
    """``auto`` makes upstream's own inference-script choice: FlashAttention 2 on a recent GPU
    in half precision when installed, SDPA on other GPUs, eager on CPU."""
    if choice != "auto":
        return choice
    if device.type != "cuda":
        return "eager"
    if dtype != torch.float32 and importlib.util.find_spec("flash_attn") is not None:
        if torch.cuda.get_device_capability(device)[0] >= 8:
            return "flash_attention_2"
    return "sdpa"


def build_upstream(
    up: Upstream,
    ours: MossTTSRealtime,
    checkpoint: Path | str | None,
    attn: str,
    device: torch.device,
    dtype: torch.dtype,
) -> torch.nn.Module:
    """Upstream's model from the checkpoint, or (``checkpoint`` None) from our weights."""
    if checkpoint is not None:
        model = up.model_cls.from_pretrained(str(checkpoint), attn_implementation=attn, dtype=dtype)
        return model.to(device).eval().requires_grad_(False)
    # Upstream's config copies the attention choice into its two sub-configs when it is built;
    # setting it afterwards (as _from_config does) would leave them at the default.
    config = up.config_cls(**upstream_config_dict(ours.cfg), attn_implementation=attn)
    with torch.device(device):
        model = up.model_cls._from_config(config, attn_implementation=attn, dtype=dtype)
    result = model.load_state_dict(ours.checkpoint_state_dict(), strict=False)
    check_handoff_keys(list(result.missing_keys), list(result.unexpected_keys))
    return model.to(device).eval().requires_grad_(False)


def upstream_attn_used(model: torch.nn.Module) -> dict[str, str | None]:
    def get(cfg) -> str | None:
        return getattr(cfg, "_attn_implementation", None)

    return {
        "backbone": get(model.language_model.config),
        "local": get(model.local_transformer.config),
    }


def new_inference(
    up: Upstream, model: torch.nn.Module, cfg: MossTTSRealtimeConfig, compile_: bool
) -> Any:
    # Only ``pad_token_id`` of the tokenizer is read (to left-pad unequal prompts); rows are ids.
    tokenizer = types.SimpleNamespace(pad_token_id=cfg.text_pad)
    inf = up.inference_cls(
        model,
        tokenizer,
        channels=cfg.rvq,
        audio_channel_pad=cfg.audio_pad_token,
        audio_bos_token=cfg.audio_bos,
        audio_eos_token=cfg.audio_eos,
        text_pad_id=cfg.text_pad,
        aud_pad_id=cfg.reference_audio_pad,
    )
    # Upstream wraps its local-transformer loop in torch.compile unless it runs FlashAttention;
    # the eager comparison turns that off (``--upstream-compile`` times it on).
    inf._should_compile_local_transformer = compile_ and not inf._use_dynamic_local_cache
    return inf


# ---- prompts ------------------------------------------------------------------------------------


@dataclass
class Prompts:
    """turnK: [R, 17] prefill rows (ending with the text prefix, BOS on the last row);
    fedK: text ids the steps feed after it; goldenK: reference frames when known."""

    source: str
    turn1: torch.Tensor
    fed1: list[int]
    turn2: torch.Tensor
    fed2: list[int]
    max_frames: tuple[int, int]
    golden: tuple[torch.Tensor, torch.Tensor] | None = None


def golden_prompts(directory: Path, with_frames: bool) -> Prompts | None:
    """The fixture's two-turn session, if ``directory`` holds fixture goldens."""
    path = directory / "golden.safetensors"
    if not path.is_file():
        return None
    g = load_file(path)
    meta = json.loads((directory / "golden.json").read_text())
    turns = meta["turns"]
    return Prompts(
        source=f"golden session ({directory})",
        turn1=g["turn1.prompt"],
        fed1=g["turn1.fed"].tolist(),
        turn2=g["turn2.prompt"],
        fed2=g["turn2.fed"].tolist(),
        max_frames=(int(turns["turn1"]["max_frames"]), int(turns["turn2"]["max_frames"])),
        golden=(g["turn1.frames"], g["turn2.frames"]) if with_frames else None,
    )


def synthetic_prompts(
    cfg: MossTTSRealtimeConfig, context: int, turn2_rows: int, frames: int, seed: int = 0
) -> Prompts:
    """Stand-in rows with the real layout's shape (no tokenizer needed; cost depends on lengths):
    turn 1 = system-ish text rows with a block of reference audio, then the text prefix;
    turn 2 = the EOS row closing turn 1, user speech rows, then the next text prefix."""
    gen = torch.Generator().manual_seed(seed)
    vocab = min(cfg.language.vocab_size, cfg.text_pad)
    pad = cfg.audio_pad_token

    def text_rows(n: int) -> torch.Tensor:
        rows = torch.full((n, cfg.channels), pad, dtype=torch.int64)
        rows[:, 0] = torch.randint(0, vocab, (n,), generator=gen)
        return rows

    def audio_rows(n: int, text: int) -> torch.Tensor:
        rows = torch.randint(0, pad, (n, cfg.channels), generator=gen)
        rows[:, 0] = text
        return rows

    def prefix(n: int) -> torch.Tensor:
        rows = text_rows(n)
        rows[-1, 1] = cfg.audio_bos
        return rows

    n_prefix = min(DELAY_TOKENS, max(1, context // 4))
    n_ref = max(0, min(context // 4, context - n_prefix - 1))
    system = text_rows(context - n_prefix - n_ref)
    turn1 = torch.cat((system, audio_rows(n_ref, cfg.reference_audio_pad), prefix(n_prefix)))
    closing = torch.full((1, cfg.channels), pad, dtype=torch.int64)
    closing[0, 0], closing[0, 1] = cfg.text_pad, cfg.audio_eos
    n_prefix2 = min(DELAY_TOKENS, max(1, turn2_rows // 4))
    n_user = max(0, turn2_rows - 1 - n_prefix2)
    turn2 = torch.cat((closing, audio_rows(n_user, cfg.text_pad), prefix(n_prefix2)))

    def fed() -> list[int]:
        return torch.randint(0, vocab, (frames,), generator=gen).tolist()

    return Prompts(
        source="synthetic",
        turn1=turn1,
        fed1=fed(),
        turn2=turn2,
        fed2=fed(),
        max_frames=(frames, frames),
    )


def split_for_upstream(prompt: torch.Tensor, cfg: MossTTSRealtimeConfig) -> tuple[Any, list[int]]:
    """Splits prefill rows into what upstream's ``prefill`` takes: the history rows and the text
    prefix, which it turns back into rows (text + audio pad, BOS on the last). The split is
    checked to rebuild exactly the same rows."""
    audio = prompt[:, 1:]
    last = torch.full_like(audio[-1], cfg.audio_pad_token)
    last[0] = cfg.audio_bos
    if not torch.equal(audio[-1], last):
        raise ValueError("the prompt's last row must be [text, BOS, pad...]")
    n = 1
    while n < min(DELAY_TOKENS, prompt.shape[0]) and bool(
        (audio[-n - 1] == cfg.audio_pad_token).all()
    ):
        n += 1
    return prompt[:-n].numpy(), prompt[-n:, 0].tolist()


# ---- correctness cross-check --------------------------------------------------------------------


def eager_stepper(model: MossTTSRealtime, cache) -> Callable[..., Any]:
    """``decode_step`` bound to a cache: the same call signature as ``GraphedDecodeStep.step``."""

    def step(rows, slots, kv_len, sampling, history, noise):
        return model.decode_step(rows, cache, slots, kv_len, sampling, history, noise)

    return step


def ours_session(
    model: MossTTSRealtime, prompts: Prompts, n_frames: tuple[int, int], graphed: bool
) -> list[torch.Tensor]:
    """Greedy turn 1 then turn 2 (same cache) through our prefill + decode step."""
    cfg = model.cfg
    dev = next(model.parameters()).device
    params = SamplingParams.greedy_decoding()
    sampling = BatchSampling.from_params([params], dev)
    max_len = sum(p.shape[0] for p in (prompts.turn1, prompts.turn2)) + sum(n_frames) + 2
    cache = model.new_cache(1, max_len)  # max_len keeps the graphed step's spare position
    slots = torch.zeros(1, dtype=torch.int64, device=dev)
    stepper = eager_stepper(model, cache)
    if graphed:
        stepper = GraphedDecodeStep(model, cache, window=params.repetition_window).step
    out = []
    for prompt, fed, limit in (
        (prompts.turn1, prompts.fed1, n_frames[0]),
        (prompts.turn2, prompts.fed2, n_frames[1]),
    ):
        history = FrameHistory(1, params.repetition_window, cfg.rvq, dev)
        hidden = model.prefill(prompt[None].to(dev), cache, slots)
        frames = [model.generate_frame(hidden, sampling)]  # no penalty on the prefill frame
        text = list(fed)
        while int(frames[-1][0, 0]) != cfg.audio_eos and len(frames) < limit:
            history.push(frames[-1])
            token = torch.tensor([[text.pop(0) if text else cfg.text_pad]], device=dev)
            row = torch.cat((token, frames[-1]), dim=1)[:, None]
            kv_len = cache.length(0) + 1
            frame, _ = stepper(row, slots, kv_len, sampling, history.buf, None)
            frames.append(frame.clone())  # the graphed step returns views of its buffers
        out.append(torch.cat(frames).cpu())
    return out


def upstream_session(
    up: Upstream,
    model: torch.nn.Module,
    cfg: MossTTSRealtimeConfig,
    prompts: Prompts,
    n_frames: tuple[int, int],
) -> list[torch.Tensor]:
    """Greedy turn 1 then turn 2 through upstream's ``prefill`` / ``step`` (its KV cache kept
    across turns, as its multi-turn helper does)."""
    inf = new_inference(up, model, cfg, compile_=False)
    greedy = dict(do_sample=False, repetition_penalty=1.1, repetition_window=50)
    out = []
    for turn, (prompt, fed, limit) in enumerate(
        (
            (prompts.turn1, prompts.fed1, n_frames[0]),
            (prompts.turn2, prompts.fed2, n_frames[1]),
        )
    ):
        if turn:
            inf.reset_generation_state(keep_cache=True)
        history, prefix = split_for_upstream(prompt, cfg)
        frames = [inf.prefill(history, prefix, **greedy)]
        text = list(fed)
        while int(frames[-1][0, 0]) != cfg.audio_eos and len(frames) < limit:
            frames.append(inf.step(text.pop(0) if text else cfg.text_pad, **greedy))
        out.append(torch.cat(frames).cpu())
    return out


def compare(a: torch.Tensor, b: torch.Tensor) -> dict[str, Any]:
    n = min(a.shape[0], b.shape[0])
    same = (a[:n] == b[:n]).all(-1)
    bad = (~same).nonzero()
    return {
        "frames": [int(a.shape[0]), int(b.shape[0])],
        "agree": int(same.sum()),
        "first_mismatch": int(bad[0]) if bad.numel() else None,
        "identical": bool(same.all()) and a.shape[0] == b.shape[0],
    }


def cross_check(
    up: Upstream,
    up_model: torch.nn.Module,
    ours: MossTTSRealtime,
    prompts: Prompts,
    n_frames: tuple[int, int],
) -> dict[str, Any]:
    with torch.inference_mode():
        ref = upstream_session(up, up_model, ours.cfg, prompts, n_frames)
        eager = ours_session(ours, prompts, n_frames, graphed=False)
        graphed = ours_session(ours, prompts, n_frames, graphed=True)
    result: dict[str, Any] = {"decoding": "greedy, repetition penalty 1.1 over 50 frames"}
    for k in range(2):
        turn = {
            "ours_eager_vs_upstream": compare(eager[k], ref[k]),
            "ours_graphed_vs_upstream": compare(graphed[k], ref[k]),
        }
        if prompts.golden is not None:
            # Turn 2's golden assumes turn 1 ran to its end.
            if k == 0 or n_frames[0] >= prompts.golden[0].shape[0]:
                turn["upstream_vs_golden"] = compare(ref[k], prompts.golden[k])
                turn["ours_eager_vs_golden"] = compare(eager[k], prompts.golden[k])
        result[f"turn{k + 1}"] = turn
    # Totals over both turns, per comparison: "agreeing/compared" frames.
    totals = {}
    for name in result["turn1"]:
        pairs = [result[t][name] for t in ("turn1", "turn2") if name in result[t]]
        agree, n = sum(p["agree"] for p in pairs), sum(max(p["frames"]) for p in pairs)
        totals[name] = f"{agree}/{n}"
    result["totals"] = totals
    result["all_identical"] = all(
        p["identical"] for t in ("turn1", "turn2") for p in result[t].values()
    )
    return result


# ---- timing -------------------------------------------------------------------------------------


def time_ours(
    model: MossTTSRealtime, prompts: Prompts, B: int, args, device: torch.device
) -> dict[str, Any]:
    """Our eager and graphed decode step at batch B over turn 1's prompt, then the turn-2 prefill
    (+ its first frame) on top of the history the steps left."""
    cfg = model.cfg
    n_steps = args.warmup + args.iters
    p1, p2 = prompts.turn1.to(device), prompts.turn2.to(device)
    cache = model.new_cache(B, p1.shape[0] + 2 * n_steps + p2.shape[0] + 2)
    slots = torch.arange(B, device=device)
    params = SamplingParams() if args.sampled else SamplingParams.greedy_decoding()
    sampling = BatchSampling.from_params([params] * B, device)
    frame0 = model.generate_frame(model.prefill(p1.expand(B, -1, -1), cache, slots), sampling)
    L0 = p1.shape[0]
    out: dict[str, Any] = {}
    graphed = GraphedDecodeStep(model, cache, window=params.repetition_window)
    slot_list = list(range(B))  # the graphed step takes host slots (no device read)

    def graphed_step(rows, slots, *rest):
        return graphed.step(rows, slot_list, *rest)

    for mode, stepper in (("eager", eager_stepper(model, cache)), ("graphed", graphed_step)):
        cache.lengths[:B] = L0  # both modes decode from the same turn-1 prompt
        history = FrameHistory(B, params.repetition_window, cfg.rvq, device)
        row = torch.full((B, 1, cfg.channels), cfg.text_pad, device=device)
        row[:, 0, 1:] = frame0
        length = [L0]

        def step(stepper=stepper, history=history, row=row, length=length) -> None:
            noise = None
            if not params.greedy:
                noise = NoiseKeys.from_ints(range(B), [length[0]] * B, device)
            history.push(row[:, 0, 1:])
            frame, _ = stepper(row, slots, length[0] + 1, sampling, history.buf, noise)
            row[:, 0, 1:] = frame
            length[0] += 1

        out[f"ours_{mode}_step"] = time_calls(step, device, args.warmup, args.iters)
    L1 = L0 + n_steps
    rows2 = p2.expand(B, -1, -1)

    def prefill2() -> None:
        cache.lengths[:B] = L1
        model.generate_frame(model.prefill(rows2, cache, slots), sampling)

    out["ours_prefill_turn2"] = time_calls(prefill2, device, args.warmup, args.iters)
    out["ours_prefill_turn2"]["history_rows"] = L1
    return out


def time_upstream(
    up: Upstream,
    model: torch.nn.Module,
    cfg: MossTTSRealtimeConfig,
    prompts: Prompts,
    B: int,
    args,
    device: torch.device,
    compile_: bool,
) -> dict[str, Any]:
    """Upstream's ``step`` at batch B after the turn-1 prefill, then its turn-2 ``prefill`` on top
    of that history (the cache cropped back before every call)."""
    inf = new_inference(up, model, cfg, compile_)
    kw: dict[str, Any] = dict(repetition_penalty=1.1, repetition_window=50)
    kw["do_sample"] = bool(args.sampled)
    tag = "upstream_compiled" if compile_ else "upstream"
    history, prefix = split_for_upstream(prompts.turn1, cfg)
    inf.prefill([history] * B, [prefix] * B, device=device, **kw)
    text = [cfg.text_pad] * B

    def step() -> None:
        # A frame with EOS would end upstream's turn and make later steps no-ops: the timing
        # wants every call to do the work.
        inf._is_stopping.zero_()
        inf.step(text, **kw)

    out: dict[str, Any] = {f"{tag}_step": time_calls(step, device, args.warmup, args.iters)}
    L1 = inf.past_key_values.get_seq_length()
    mask1 = inf.attention_mask.clone()
    history2, prefix2 = split_for_upstream(prompts.turn2, cfg)

    def prefill2() -> None:
        inf.past_key_values.crop(L1)
        inf.attention_mask = mask1
        inf.reset_generation_state(keep_cache=True)
        inf.prefill([history2] * B, [prefix2] * B, device=device, **kw)

    out[f"{tag}_prefill_turn2"] = time_calls(prefill2, device, args.warmup, args.iters)
    out[f"{tag}_prefill_turn2"]["history_rows"] = int(L1)
    return out


def smoke_upstream(
    up: Upstream, model: torch.nn.Module, cfg: MossTTSRealtimeConfig, device: torch.device
) -> None:
    """One upstream local-transformer frame, so an incompatible environment fails with a clear
    message before anything else runs."""
    inf = new_inference(up, model, cfg, compile_=False)
    hidden = torch.zeros(1, 1, cfg.language.hidden_size, device=device, dtype=model.dtype)
    try:
        with torch.inference_mode():
            inf.generate_local_transformer(
                hidden_states=hidden,
                temperature=1.0,
                top_p=1.0,
                top_k=1,
                do_sample=False,
                repetition_penalty=None,
                repetition_window=None,
                generated_tokens=None,
                gen_step=0,
            )
    except Exception as e:
        raise UpstreamError(
            f"upstream's local transformer does not run here: {e!r}. {_transformers_hint()}"
        ) from e


# ---- main ---------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--upstream-repo",
        default=os.environ.get(ENV_UPSTREAM),
        help=f"your checkout of github.com/OpenMOSS/MOSS-TTS (default: ${ENV_UPSTREAM})",
    )
    ap.add_argument("--checkpoint", help="local dir or hub id (default: tiny fixture model)")
    ap.add_argument("--real-size", action="store_true", help="real architecture sizes")
    ap.add_argument("--random-weights", action="store_true", help="no checkpoint, random init")
    ap.add_argument("--batch", type=int, nargs="+", default=[1])
    ap.add_argument(
        "--context", type=int, default=256, help="turn-1 prompt rows when no goldens are at hand"
    )
    ap.add_argument("--turn2-rows", type=int, default=48, help="synthetic turn-2 prompt rows")
    ap.add_argument(
        "--check-frames",
        type=int,
        help="frames per turn in the cross-check (default: the goldens' max_frames, else 8)",
    )
    ap.add_argument("--sampled", action="store_true", help="time sampling instead of argmax")
    ap.add_argument(
        "--upstream-attn",
        default="auto",
        choices=["auto", "eager", "sdpa", "flash_attention_2"],
        help="upstream's attn_implementation (auto: what its infer.py picks)",
    )
    ap.add_argument(
        "--upstream-compile",
        action="store_true",
        help="also time upstream with its torch.compile'd local transformer (its default)",
    )
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args()
    if not args.upstream_repo:
        ap.error(f"--upstream-repo (or ${ENV_UPSTREAM}) is required: a MOSS-TTS checkout")
    if args.real_size and not args.random_weights and not args.checkpoint:
        ap.error("--real-size needs --random-weights (or use --checkpoint)")
    try:
        run(args)
    except UpstreamError as e:
        raise SystemExit(f"bench_upstream: {e}") from None


def run(args) -> None:
    up = import_upstream(args.upstream_repo)  # fails fast, before any model is built
    import transformers

    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    ours = build_model(args, device, dtype)
    attn = resolve_attn(args.upstream_attn, device, dtype)
    fixture = fixtures_root() / "realtime"
    if args.random_weights:
        source, checkpoint = "our random weights, handed over", None
    else:
        checkpoint = args.checkpoint or fixture
        source = str(checkpoint)
    up_model = build_upstream(up, ours, checkpoint, attn, device, dtype)
    if set(upstream_attn_used(up_model).values()) != {attn}:
        logger.warning(f"upstream runs {upstream_attn_used(up_model)}, not {attn} throughout")
    smoke_upstream(up, up_model, ours.cfg, device)

    prompt_dir = Path(args.checkpoint) if args.checkpoint else fixture
    prompts = None
    if prompt_dir.is_dir() and not args.real_size:
        prompts = golden_prompts(prompt_dir, with_frames=not args.random_weights)
    if prompts is None:
        prompts = synthetic_prompts(ours.cfg, args.context, args.turn2_rows, frames=8)
    n_check = prompts.max_frames if args.check_frames is None else (args.check_frames,) * 2
    exact_expected = prompts.golden is not None and dtype == torch.float32
    logger.info(f"cross-check: {n_check} frames per turn ({prompts.source})")
    check = cross_check(up, up_model, ours, prompts, n_check)

    results = []
    with torch.inference_mode():
        for B in args.batch:
            logger.info(f"timing batch {B}")
            r: dict[str, Any] = {"batch": B}
            r.update(time_upstream(up, up_model, ours.cfg, prompts, B, args, device, False))
            r.update(time_ours(ours, prompts, B, args, device))
            up_ms = r["upstream_step"]["median_ms"]
            for mode in ("eager", "graphed"):
                r[f"speedup_ours_{mode}_step"] = up_ms / r[f"ours_{mode}_step"]["median_ms"]
            r["speedup_ours_prefill_turn2"] = (
                r["upstream_prefill_turn2"]["median_ms"] / r["ours_prefill_turn2"]["median_ms"]
            )
            results.append(r)
        # Last: on CPU, inductor's OpenMP kernels can slow every later eager op in the process.
        for r in results if args.upstream_compile else []:
            logger.info(f"timing upstream compiled, batch {r['batch']} (compiling takes minutes)")
            try:
                r.update(
                    time_upstream(up, up_model, ours.cfg, prompts, r["batch"], args, device, True)
                )
            except Exception as e:  # inductor needs a compiler toolchain: report, go on
                logger.warning(f"upstream compiled step failed: {e!r}")
                r["upstream_compiled_error"] = repr(e)

    out = {
        "benchmark": "upstream_vs_ours",
        "model": "real-size random" if args.real_size else source,
        "weights": source,
        "dtype": args.dtype,
        "sampling": "sampled" if args.sampled else "greedy",
        "parameters": ours.num_parameters(),
        "upstream": {
            "repo": str(up.root.parent if up.root.name == UPSTREAM_SUBDIR else up.root),
            "commit": upstream_commit(up.root),
            "transformers": transformers.__version__,
            "attn_implementation": upstream_attn_used(up_model),
            "local_transformer": "torch.compile off (eager)"
            + ("; its compiled default timed last" if args.upstream_compile else ""),
            "batching": "supported: MossTTSRealtimeInference.prefill/step take a batch of "
            "prompts (left-padded with an attention mask); timed with B equal prompts",
        },
        "prompts": {
            "source": prompts.source,
            "turn1_rows": int(prompts.turn1.shape[0]),
            "turn2_rows": int(prompts.turn2.shape[0]),
        },
        "step": "one backbone row over the KV cache + a 16-code frame (local transformer)",
        "prefill_turn2": "turn-2 prompt rows appended to turn 1's history + its first frame",
        "check": check,
        "env": environment(device),
        "results": results,
    }
    b1 = results[0]
    ms = {k: b1[k]["median_ms"] for k in b1 if isinstance(b1[k], dict)}
    emit(
        out,
        args.out,
        f"upstream_vs_ours: b{b1['batch']} step upstream {ms['upstream_step']:.2f} ms, ours "
        f"eager {ms['ours_eager_step']:.2f} ms ({b1['speedup_ours_eager_step']:.1f}x), graphed "
        f"{ms['ours_graphed_step']:.2f} ms ({b1['speedup_ours_graphed_step']:.1f}x); turn-2 "
        f"prefill {ms['upstream_prefill_turn2']:.2f} vs {ms['ours_prefill_turn2']:.2f} ms; "
        f"frames agree {check['totals']['ours_eager_vs_upstream']} ({args.device}, {args.dtype})",
    )
    if exact_expected and not check["all_identical"]:
        raise SystemExit("bench_upstream: frames differ on the fixture in float32 (see check)")


if __name__ == "__main__":
    main()
