"""The pipecat private names the package relies on (all in ``service/pipecat_compat.py``) are
there, with the shape it expects, on the pipecat pyproject pins; on any other pipecat this
fails, saying what changed."""

from __future__ import annotations

import asyncio
import re
from importlib.metadata import version
from pathlib import Path

import pytest
from loguru import logger
from packaging.requirements import Requirement
from pipecat.services.tts_service import TTSContext, TTSService
from pipecat.utils.context.aggregated_frame_sequencer import AggregatedFrameSequencer

from moss_pipecat.service import pipecat_compat as compat

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def _pipecat_requirements() -> list[Requirement]:
    """Every pipecat-ai requirement pyproject states (the dependency and each extra's)."""
    return [Requirement(r) for r in re.findall(r'"(pipecat-ai[^"]*)"', PYPROJECT.read_text())]


def test_the_installed_pipecat_is_the_one_the_compat_module_was_written_for():
    compat.check_pipecat()  # raises, listing every difference, on another pipecat
    assert compat.problems() == []


def test_the_compat_module_and_pyproject_pin_the_same_pipecat():
    """Raising the pin without revisiting the compat module fails here."""
    pinned = Requirement(compat.PINNED).specifier
    reqs = _pipecat_requirements()
    assert reqs and all(r.specifier == pinned for r in reqs), [str(r) for r in reqs]
    assert pinned.contains(version("pipecat-ai"))
    major, minor = compat.WRITTEN_FOR
    assert pinned.contains(f"{major}.{minor}.0") and not pinned.contains(f"{major}.{minor + 1}.0")


def test_another_pipecat_version_is_reported(monkeypatch):
    monkeypatch.setattr(compat, "version", lambda name: "1.15.0")
    with pytest.raises(compat.PipecatCompatError, match="pipecat-ai 1.15.0 is installed"):
        compat.check_pipecat()


@pytest.mark.parametrize(
    ("owner", "name", "says"),
    [
        (TTSService, "_interrupt_audio_contexts", "re-check interruption_restarts_word_clock"),
        (TTSService, "_update_settings", "TTSService._update_settings is gone"),
        (TTSService, "__init__", "_tts_contexts is not a dict"),
        (TTSService, "_push_sequencer_frames", "TTSService._push_sequencer_frames"),
        (AggregatedFrameSequencer, "finalize", "_aggregated_frame_sequencer.finalize"),
    ],
)
def test_a_private_name_that_changed_is_reported(monkeypatch, owner, name, says):
    """Stands in for a pipecat release that renamed or reshaped what the service reads."""
    if name == "__init__":
        init = owner.__init__

        def renamed(self, *args, **kwargs):  # a release that renamed _tts_contexts
            init(self, *args, **kwargs)
            self._contexts_v2 = self.__dict__.pop("_tts_contexts")

        monkeypatch.setattr(owner, name, renamed)
    else:
        monkeypatch.delattr(owner, name)
        if name == "_update_settings":  # AIService still has one: take it off too
            monkeypatch.delattr(TTSService.__mro__[1], name)
    with pytest.raises(compat.PipecatCompatError, match=says):
        compat.check_pipecat()


def test_the_mirrored_rule_reads_what_pipecat_reads():
    """The rule ``interruption_restarts_word_clock`` mirrors, on pipecat's own objects: the
    playing context is kept (no restart) only when its TTSContext is uninterruptible."""

    class Probe(TTSService):
        async def run_tts(self, text: str, context_id: str):
            yield None

    service = Probe(sample_rate=24000)
    assert compat.interruption_restarts_word_clock(service)  # nothing playing
    service.get_audio_contexts()  # the public view exists alongside
    contexts = service._tts_contexts
    contexts["kept"] = TTSContext(interruptible=False)
    contexts["dropped"] = TTSContext()
    assert compat.context_interruptible(service, "dropped")
    assert not compat.context_interruptible(service, "kept")
    assert compat.context_interruptible(service, "unknown")  # pipecat's default
    for playing, restarts in (("kept", False), ("dropped", True), (None, True)):
        service._audio_context_manager.playing_context_id = playing
        assert compat.interruption_restarts_word_clock(service) is restarts


class _Ends:
    """A stand-in for ``TTSService.stop``: cut by ``cuts`` interruptions, then ends."""

    def __init__(self, cuts: int) -> None:
        self.cuts, self.tries = cuts, 0

    async def __call__(self) -> None:
        self.tries += 1
        if self.tries <= self.cuts:
            cut = asyncio.get_running_loop().create_future()
            cut.cancel()  # what awaiting the audio-context task an interruption cancelled raises
            await cut


@pytest.mark.parametrize("cuts", [0, 1, 3])
async def test_an_end_cut_by_interruptions_is_tried_again_to_its_end(cuts):
    stop = _Ends(cuts)
    await compat.stop_through_interruptions("tts", stop)
    assert stop.tries == cuts + 1


async def test_an_end_cut_every_time_goes_on_after_its_tries():
    # The EndFrame goes on rather than being lost, with a warning.
    warnings: list[str] = []
    sink = logger.add(lambda m: warnings.append(str(m)), level="WARNING")
    try:
        stop = _Ends(cuts=10**6)
        await compat.stop_through_interruptions("tts", stop)
    finally:
        logger.remove(sink)
    assert stop.tries == compat.END_TRIES
    assert len(warnings) == 1 and "ending anyway" in warnings[0]


async def test_cancelling_the_ending_task_itself_still_cancels_it():
    started = asyncio.Event()

    async def stop() -> None:
        started.set()
        await asyncio.sleep(60)

    task = asyncio.create_task(compat.stop_through_interruptions("tts", stop))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled()
