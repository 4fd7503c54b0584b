"""TLS: ``wss://`` with a certificate made in the test; a client without the CA fails clearly."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
import time
import urllib.request
from pathlib import Path

import pytest

from moss_pipecat.client import RemoteEngine
from moss_pipecat.protocol.errors import TLSVerificationError
from moss_pipecat.server import EngineServer, ServerConfig

from ..fixture_facts import frame_pcm_bytes
from .conftest import GREEDY, TOKEN

x509 = pytest.importorskip("cryptography.x509")


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1/localhost (its own CA): (cert, key) PEM files."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "moss-pipecat test")])
    now = datetime.datetime.now(datetime.UTC)
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.fixture
async def tls_server(make_tiny_engine, tmp_path):
    cert, key = make_certificate(tmp_path)
    engine = make_tiny_engine(eos_min_frames=3)
    config = ServerConfig(
        host="127.0.0.1", port=0, token=TOKEN, ssl_certfile=str(cert), ssl_keyfile=str(key)
    )
    server = await EngineServer(engine, config).start()
    yield server, cert
    await server.stop()


async def test_a_full_turn_over_wss(tls_server, codec_dir):
    server, cert = tls_server
    assert server.url.startswith("wss://127.0.0.1:") and server.http_url.startswith("https://")
    client = RemoteEngine(server.url, token=TOKEN, ssl_ca_file=str(cert))
    session = await client.create_session(sampling=GREEDY)
    turn = await session.start_turn(max_frames=3)
    turn.push_text("Hello over TLS.")
    turn.end_text()
    chunks = [c async for c in turn]
    frame_bytes = frame_pcm_bytes(codec_dir)
    assert len(chunks) == 3 and all(len(c.pcm) == frame_bytes for c in chunks)
    assert turn.summary.error is None
    await session.close()

    # The HTTP side is behind TLS too.
    def get(path: str) -> tuple[int, str]:
        ctx = ssl.create_default_context(cafile=str(cert))
        with urllib.request.urlopen(server.http_url + path, timeout=5, context=ctx) as r:
            return r.status, r.read().decode()

    assert await asyncio.to_thread(get, "/healthz") == (200, "ok\n")


async def test_a_client_without_the_ca_fails_at_once_and_clearly(tls_server):
    server, _ = tls_server
    # Not retried for the reconnect window: one far longer than the test's hang guard, which a
    # client retrying the handshake would not get out of.
    client = RemoteEngine(server.url, token=TOKEN, reconnect_timeout=600)
    with pytest.raises(TLSVerificationError, match="certificate .* failed verification") as info:
        await asyncio.wait_for(client.create_session(), 60)  # a hang guard
    assert "ssl_ca_file" in str(info.value)
    # Plain ws:// to a TLS port does not get through either.
    plain = RemoteEngine(server.url.replace("wss://", "ws://"), token=TOKEN, reconnect_timeout=0.3)
    with pytest.raises(Exception, match="cannot reach"):
        await asyncio.wait_for(plain.create_session(), 10)


async def test_the_remote_service_speaks_over_wss(tls_server):
    from pipecat.frames.frames import ErrorFrame, TTSAudioRawFrame

    from moss_pipecat.service.remote import MossRemoteTTSService

    from .test_remote_service import GREEDY as SERVICE_GREEDY
    from .test_remote_service import reply, run

    server, cert = tls_server
    tts = MossRemoteTTSService(
        url=server.url, token=TOKEN, ssl_ca_file=str(cert), settings=SERVICE_GREEDY
    )
    down, _, _ = await run(tts, reply("Hello ", "over ", "wss."))
    assert not [f for f in down if isinstance(f, ErrorFrame)]
    assert [f for f in down if isinstance(f, TTSAudioRawFrame)]


def test_tls_options_need_a_wss_url():
    from moss_pipecat.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match="wss://"):
        RemoteEngine("ws://127.0.0.1:1", ssl_ca_file="/ca.pem")


async def test_the_cli_serves_wss_with_a_token_file_and_no_token_on_argv(fixtures_dir, tmp_path):
    import subprocess
    import sys

    from .conftest import free_port

    cert, key = make_certificate(tmp_path)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    port = free_port()
    cmd = [sys.executable, "-m", "moss_pipecat.cli", "serve", "--tiny", str(fixtures_dir)]
    cmd += ["--port", str(port), "--token-file", str(token_file), "--eos-min-frames", "2"]
    cmd += ["--ssl-certfile", str(cert), "--ssl-keyfile", str(key)]
    log = open(tmp_path / "server.log", "wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    ctx = ssl.create_default_context(cafile=str(cert))

    def ready() -> bool:
        try:
            url = f"https://127.0.0.1:{port}/readyz"
            with urllib.request.urlopen(url, timeout=1, context=ctx) as r:
                return r.status == 200
        except OSError:
            return False

    try:
        deadline = time.monotonic() + 60
        while not await asyncio.to_thread(ready):
            assert proc.poll() is None, (tmp_path / "server.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "the server did not become ready"
            await asyncio.sleep(0.2)
        argv = (Path("/proc") / str(proc.pid) / "cmdline").read_bytes()
        assert TOKEN.encode() not in argv
        url = f"wss://127.0.0.1:{port}/v1/ws"
        client = RemoteEngine(url, token=TOKEN, ssl_ca_file=str(cert))
        session = await client.create_session(sampling=GREEDY)
        turn = await session.start_turn(max_frames=2)
        turn.push_text("Served from the command line.")
        turn.end_text()
        assert (await asyncio.wait_for(turn.wait(), 20)).audio_frames == 2
        await session.close()
        with pytest.raises(Exception, match="refused the token"):
            await RemoteEngine(url, token="wrong", ssl_ca_file=str(cert)).create_session()
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
    assert proc.returncode == 0, (tmp_path / "server.log").read_text()[-2000:]


async def test_the_remote_service_without_the_ca_is_refused_once_at_its_start(tls_server):
    """A certificate that fails verification will not heal by retrying: as a refusal, one
    permanent ErrorFrame saying what to give the service, and pipecat gives it no more text."""
    from pipecat.frames.frames import ErrorFrame, TTSAudioRawFrame
    from pipecat.utils.errors import ErrorCategory

    from moss_pipecat.service.remote import MossRemoteTTSService

    from .test_remote_service import reply, run

    server, _ = tls_server
    tts = MossRemoteTTSService(url=server.url, token=TOKEN)
    down, up, _ = await run(tts, [*reply("Hello ", "there."), *reply("And ", "again.")])
    errors = [f for f in up if isinstance(f, ErrorFrame)]
    assert len(errors) == 1, [f.error for f in errors]
    (error,) = errors
    assert isinstance(error.exception, TLSVerificationError)
    assert error.category is ErrorCategory.CONNECTIVITY
    assert error.error.startswith(
        "MOSS TTS: this call was refused: the server's TLS certificate failed verification"
    )
    assert "ssl_ca_file" in error.error
    assert not tts.is_usable and not [f for f in down if isinstance(f, TTSAudioRawFrame)]
    assert server.hub.engine.session_ids == []
