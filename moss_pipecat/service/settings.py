"""``MossTTSSettings``: the service's runtime-updatable settings, and bringing the session up to
them (sampling, limits, the reference voice and which files a voice may name)."""

from __future__ import annotations

import copy
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from pipecat.services.settings import TTSSettings
from pipecat.utils.types import NOT_GIVEN, NotGiven, is_given

from moss_pipecat.errors import InvalidInputError, MossError
from moss_pipecat.protocol.errors import ServerUnavailableError
from moss_pipecat.speech.commands import SetLimits, SetSampling
from moss_pipecat.speech.models import DEFAULT_MODEL
from moss_pipecat.speech.sampling import SamplingParams

_DEFAULT_SAMPLING = SamplingParams()


@dataclass
class MossTTSSettings(TTSSettings):
    """Runtime-updatable settings of ``MossTTSService`` (pipecat's settings pattern).

    Parameters:
        voice: path of a reference WAV to clone (None: the model's own voice). A voice named
            in a runtime update (``TTSUpdateSettingsFrame``) must lie under the service's
            ``voice_dir`` (a relative path is read from there).
        temperature, top_k, top_p, repetition_penalty: sampling (upstream defaults 0.8, 30,
            0.6, 1.1); greedy: argmax decoding (deterministic).
        seed: reseeds the session's sampler.
        context_budget: KV positions the conversation may use before its oldest turns are
            dropped (None: the engine's).
        lookahead_s: how far generation may run ahead of playback (None: the engine's).
    """

    temperature: float | None | NotGiven = field(default_factory=lambda: NOT_GIVEN)
    top_k: int | None | NotGiven = field(default_factory=lambda: NOT_GIVEN)
    top_p: float | None | NotGiven = field(default_factory=lambda: NOT_GIVEN)
    repetition_penalty: float | None | NotGiven = field(default_factory=lambda: NOT_GIVEN)
    greedy: bool | None | NotGiven = field(default_factory=lambda: NOT_GIVEN)
    seed: int | None | NotGiven = field(default_factory=lambda: NOT_GIVEN)
    context_budget: int | None | NotGiven = field(default_factory=lambda: NOT_GIVEN)
    lookahead_s: float | None | NotGiven = field(default_factory=lambda: NOT_GIVEN)


def default_settings(
    model: str | None = None, overrides: MossTTSSettings | None = None
) -> MossTTSSettings:
    """Every setting given: the model's own voice, upstream sampling, the engine's limits
    (then ``overrides``, the settings a service was constructed with), checked
    (``check_settings``): a service is never built with a value its session would refuse."""
    settings = MossTTSSettings(
        model=model or DEFAULT_MODEL,
        voice=None,
        language=None,
        temperature=_DEFAULT_SAMPLING.temperature,
        top_k=_DEFAULT_SAMPLING.top_k,
        top_p=_DEFAULT_SAMPLING.top_p,
        repetition_penalty=_DEFAULT_SAMPLING.repetition_penalty,
        greedy=_DEFAULT_SAMPLING.greedy,
        seed=None,
        context_budget=None,
        lookahead_s=None,
    )
    if overrides is not None:
        settings.apply_update(overrides)
    check_settings(settings)
    return settings


def sampling_params(settings: MossTTSSettings) -> SamplingParams:
    """The session's sampling for these settings (a None value: the default)."""
    s, d = settings, _DEFAULT_SAMPLING
    return SamplingParams(
        temperature=d.temperature if s.temperature is None else s.temperature,
        top_k=d.top_k if s.top_k is None else s.top_k,
        top_p=d.top_p if s.top_p is None else s.top_p,
        repetition_penalty=(
            d.repetition_penalty if s.repetition_penalty is None else s.repetition_penalty
        ),
        greedy=bool(s.greedy),
    )


def voice_file(voice: str, voice_dir: Path | None, *, from_update: bool) -> Path:
    """The file of a voice setting: a runtime update's lies under ``voice_dir``.

    Args:
        voice: the setting's path.
        voice_dir: the resolved directory runtime updates may read from (None: none).
        from_update: the voice came from a runtime settings update (not the constructor).

    Raises:
        InvalidInputError: the voice lies outside ``voice_dir``, names a file in an update
            without a ``voice_dir``, or is not a file.
    """
    path = Path(voice).expanduser()
    if from_update:
        if voice_dir is None:
            raise InvalidInputError(
                "a runtime settings update cannot name a voice file unless the service "
                "has a voice_dir"
            )
        path = (voice_dir / path).resolve()  # symlinks and '..' resolved first
        if not path.is_relative_to(voice_dir):
            raise InvalidInputError(f"voice reference {voice!r} lies outside voice_dir")
    if not path.is_file():
        raise InvalidInputError(f"voice reference {voice!r} is not a file")
    return path


# The settings the session's sampling and limit commands take (``check_settings``): ours
# beyond pipecat's (model, voice, language, extra).
SESSION_VALUES = tuple(
    f.name for f in fields(MossTTSSettings) if f.name not in {g.name for g in fields(TTSSettings)}
)


def check_settings(settings: MossTTSSettings, voice: bool = True) -> None:
    """The checks the session's commands make of these settings that need no engine (ranges,
    types; the commands' own ``__post_init__``), and (``voice``) a voice file that is there.

    Raises:
        InvalidInputError: naming the first value the session would refuse.
    """
    s = settings
    SetSampling(sampling_params(s), s.seed if is_given(s.seed) else None)
    SetLimits(s.context_budget, s.lookahead_s)
    if voice and is_given(s.voice) and s.voice is not None:
        voice_file(s.voice, None, from_update=False)


class SessionSettings:
    """What the session still has to be brought up to: settings changed at runtime are applied
    when the next reply starts, so a reply never changes voice midway.

    Args:
        settings: the service's settings as constructed (``check_settings`` passed).
        voice_dir: the directory voice files named in runtime updates are read from (None:
            runtime updates cannot change the voice to a file).
    """

    def __init__(self, settings: MossTTSSettings, voice_dir: str | os.PathLike | None) -> None:
        self._dirty = True
        self._voice_dirty = is_given(settings.voice) and settings.voice is not None
        self._voice: str | None = None  # the voice the session has
        self._voice_dir = Path(voice_dir).expanduser().resolve() if voice_dir else None
        if self._voice_dir is not None and not self._voice_dir.is_dir():
            raise InvalidInputError(f"voice_dir {str(voice_dir)!r} is not a directory")
        self._voice_from_update = False  # the pending voice came from a runtime update

    def updated(self, changed: dict[str, Any]) -> None:
        """Takes the settings a runtime update changed (``TTSService._update_settings``)."""
        if changed:
            # Applied when the next reply starts, so a reply never changes voice midway.
            self._dirty = True
            self._voice_dirty |= "voice" in changed
            self._voice_from_update |= "voice" in changed

    @staticmethod
    def refuse_model_change(delta: TTSSettings, settings: MossTTSSettings) -> MossError | None:
        """One engine, one model: a runtime update cannot swap it. Drops a new ``model`` from
        ``delta`` (before it is applied); returns the error to report (None: no new model)."""
        if not is_given(delta.model) or delta.model == settings.model:
            return None
        asked, delta.model = delta.model, NOT_GIVEN
        return InvalidInputError(f"the model cannot change at runtime (asked for {asked!r})")

    @staticmethod
    def refuse_bad_values(delta: TTSSettings, settings: MossTTSSettings) -> MossError | None:
        """An update whose sampling and limits, over the current settings, break a rule of
        ``check_settings`` has them dropped from ``delta`` (before it is applied): the settings
        never hold a value the session refused, so it cannot fail every later update too.
        Returns the error to report (None: the values are good)."""
        given = [n for n in SESSION_VALUES if is_given(getattr(delta, n, NOT_GIVEN))]
        if not given:
            return None
        trial = copy.deepcopy(settings)
        trial.apply_update(delta)
        try:
            check_settings(trial, voice=False)
        except InvalidInputError as e:
            for name in given:
                setattr(delta, name, NOT_GIVEN)
            return InvalidInputError(f"sampling and limits not changed: {e}")
        return None

    def voice_file(self, voice: str) -> Path:
        """The file of a voice setting: a runtime update's lies under ``voice_dir``."""
        return voice_file(voice, self._voice_dir, from_update=self._voice_from_update)

    async def apply(
        self,
        session: Any,
        settings: MossTTSSettings,
        set_voice: Callable[[str | None], Awaitable[None]],
        push_error: Callable[..., Awaitable[None]],
    ) -> None:
        """Brings the session up to the settings; a setting it refuses gives one ErrorFrame
        and the previous value stays (the reply still speaks).

        Args:
            session: the conversation's session (``set_sampling``, ``set_limits``).
            settings: the service's current settings.
            set_voice: gives the session a reference voice (the service's ``_set_voice``).
            push_error: the service's ``push_error``.
        """
        if not self._dirty:
            return
        s = settings
        self._dirty = False
        try:
            await session.set_sampling(sampling_params(s), s.seed if is_given(s.seed) else None)
            await session.set_limits(s.context_budget, s.lookahead_s)
        except MossError as e:
            # No server reached: nothing refused them, the next reply applies them again.
            self._dirty = isinstance(e, ServerUnavailableError)
            await push_error(error_msg=f"MOSS TTS: settings not applied: {e}", exception=e)
        if self._voice_dirty:
            self._voice_dirty = False
            try:
                await set_voice(s.voice)
                self._voice = s.voice
            except ServerUnavailableError as e:
                self._dirty = self._voice_dirty = True  # not refused: the next reply again
                await push_error(error_msg=f"MOSS TTS: voice not changed yet: {e}", exception=e)
            except MossError as e:
                s.voice = self._voice  # the session kept its voice: say so in the settings
                await push_error(error_msg=f"MOSS TTS: voice not changed: {e}", exception=e)
