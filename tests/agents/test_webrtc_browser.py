"""A real browser talks to the offline agent over SmallWebRTC, on loopback.

Headless Chromium (Debian's ``chromium``, driven by playwright) with a fake microphone playing
a WAV loads the agent's own web client from the agent (``python -m agents.bot -t webrtc``),
connects, speaks, and must receive the bot's reply audio: ``totalAudioEnergy`` of the inbound
audio rises in the browser's WebRTC stats, the page gets the user's transcript over the data
channel, and the agent's log shows the turn. Loopback only: the bot process offers 127.0.0.1
as its only ICE host candidate, Chromium is allowed loopback candidates.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

from .botproc import REPO, running_bot

CHROMIUM = Path("/usr/lib/chromium/chromium")  # /usr/bin/chromium is a wrapper script
CONVERSATION_S = 60


def _chromium() -> Path:
    """Debian's chromium, installed through apt-get if missing."""
    if CHROMIUM.is_file():
        return CHROMIUM
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    usable = shutil.which("apt-get") is not None and (
        not sudo or subprocess.run([*sudo, "true"], capture_output=True).returncode == 0
    )
    if not usable:
        pytest.skip("chromium is not installed and apt-get (root or sudo) is unavailable")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run([*sudo, "apt-get", "update", "-qq"], check=True, env=env, timeout=600)
    subprocess.run(
        [*sudo, "apt-get", "install", "-y", "-qq", "chromium"], check=True, env=env, timeout=900
    )
    assert CHROMIUM.is_file(), "apt-get installed chromium but its binary is not where expected"
    return CHROMIUM


def _mic_wav(path: Path) -> Path:
    """The first evaluation utterance as 48 kHz mono 16-bit: said twice, 6 s apart.

    The second time is a second chance for the random tiny TTS, which now and then samples EOS
    in its very first frame (an answer with no audio).
    """
    wav, sr = sf.read(str(REPO / "agents" / "eval" / "user1.wav"), dtype="float32")
    wav = soxr.resample(wav, sr, 48000)
    pad = lambda s: np.zeros(int(48000 * s), np.float32)  # noqa: E731
    sf.write(path, np.concatenate([pad(1), wav, pad(6), wav, pad(3)]), 48000, subtype="PCM_16")
    return path


@pytest.fixture
def bot_url(tmp_path, fixtures_dir):
    with running_bot(["-t", "webrtc"], tmp_path / "bot.log", fixtures_dir) as url:
        yield url + "/"


def test_browser_hears_the_bot_over_webrtc(bot_url, tmp_path):
    from playwright.sync_api import sync_playwright

    chromium = _chromium()
    url, log = bot_url, tmp_path / "bot.log"
    mic = _mic_wav(tmp_path / "mic.wav")
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(chromium),
            headless=True,
            args=[
                "--use-fake-ui-for-media-stream",
                "--use-fake-device-for-media-stream",
                f"--use-file-for-fake-audio-capture={mic}%noloop",
                "--autoplay-policy=no-user-gesture-required",
                "--allow-loopback-in-peer-connection",
            ],
        )
        try:
            page = browser.new_page()
            page.goto(url)
            assert page.title() == "MOSS voice agent"
            page.click("#connect")
            page.wait_for_function("window.moss.state === 'connected'", timeout=20_000)
            before = page.evaluate("window.moss.energy")
            # The bot must hear the utterance, answer, and its audio must arrive here.
            page.wait_for_function(
                "moss.energy > 0.01 && moss.userText.length > 0 && moss.botText.length > 0",
                timeout=CONVERSATION_S * 1000,
            )
            state = page.evaluate(
                "({energy: moss.energy, peak: moss.peakLevel, user: moss.userText,"
                " bot: moss.botText, info: document.getElementById('note').textContent})"
            )
            page.evaluate("window.moss.disconnect()")
        finally:
            browser.close()

    # The received audio's energy (WebRTC's own integral of its level over the playout) rose.
    # (Not the level's sampled peak: the page polls it every 200 ms, and on a loaded box it once
    # read 0 at every poll while the energy had risen by 0.19.)
    assert state["energy"] > before + 0.01, state
    # Whisper tiny.en after Opus mishears words ("catalog friends"), so only require that the
    # browser got a transcript of what it said.
    assert any(t.strip() for t in state["user"]), state
    assert state["bot"], state  # the words the bot spoke, as it spoke them (RTVI bot-output)
    assert "noise-like" in state["info"], state
    # Agent side: it heard the user (VAD + Whisper) and spoke over WebRTC.
    text = log.read_text()
    assert "User started speaking" in text
    assert "Transcription: [" in text
    assert "Bot started speaking" in text
