"""``moss-pipecat serve`` with options it cannot use: one line on stderr naming what is wrong,
exit status 2 (bad options, found before anything loads) or 1 (a checkpoint that will not load),
never a traceback."""

from __future__ import annotations

import pytest

from moss_pipecat.cli import main


@pytest.mark.parametrize(
    "argv, says",
    [
        (["--eos-min-frames", "-1"], "eos_min_frames: Input should be greater than or equal to 0"),
        (["--kv-pools", "0x5"], "kv_pools: kv_pools need positive slots"),
        (["--ssl-certfile", "/nonexistent.pem"], "TLS needs both ssl_certfile and ssl_keyfile"),
        (["--token-file", "/nonexistent/token"], "No such file or directory"),
        (["--graphs", "off", "--compile", "inductor"], "needs the graphed decode step"),
        (["--max-sessions", "0"], "max_sessions: Input should be greater than or equal to 1"),
        (["--kv-pools", "2x64", "--max-sessions", "4"], "max_sessions 4 disagrees with kv_pools"),
        (["--kv-pools", "2x64", "1x128", "--max-context", "64"], "max_context 64 disagrees"),
    ],
)
def test_bad_options_are_one_line_and_exit_2(tmp_path, capsys, argv, says):
    assert main(["serve", "--tiny", str(tmp_path), "--port", "0", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("moss-pipecat serve: error: ") and says in err, err
    assert err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize("source", ["--tiny", "--model"])
def test_a_checkpoint_that_is_not_there_is_one_line_and_exit_1(tmp_path, capsys, source):
    missing = tmp_path / "nothing-here"
    assert main(["serve", source, str(missing), "--port", "0"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("moss-pipecat serve: error: ") and str(missing) in err, err
    assert "Traceback" not in err
