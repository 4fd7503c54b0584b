"""The engine process's GC policy (``engine.gc_policy``): once an engine has started, what
start-up made is in the permanent generation (``gc.get_freeze_count() > 0``) and the young
threshold is raised; the last engine to shut down gives both back. Read in a fresh
interpreter, so this test process's collector is left as it is. (Engine outputs under the
policy: every exact-output test starts its engines with it.)"""

from __future__ import annotations

import json
import subprocess
import sys

from moss_pipecat.engine.gc_policy import YOUNG_THRESHOLD

SCRIPT = """
import gc, json, sys
from moss_pipecat.engine import SyncSession, load_tiny_engine
from moss_pipecat.model import SamplingParams

def state():
    return {"frozen": gc.get_freeze_count(), "thresholds": list(gc.get_threshold())}

out = {"before": state()}
a = load_tiny_engine(sys.argv[1], with_tokenizer=False)
out["one"] = state()
b = load_tiny_engine(sys.argv[1], with_tokenizer=False)
s = SyncSession(a.create_session(sampling=SamplingParams(greedy=True)))
chunks, _ = s.say(ids=[1, 2, 3], max_frames=4, min_frames=4)
out["frames"] = len(chunks)
s.close()
a.shutdown()
out["one_left"] = state()
b.shutdown()
out["none_left"] = state()
print(json.dumps(out))
"""


def test_started_engines_freeze_start_up_and_the_last_shutdown_gives_it_back(fixtures_dir):
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(fixtures_dir)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    before = got["before"]
    assert before["frozen"] == 0
    young, older, oldest = before["thresholds"]
    raised = [max(young, YOUNG_THRESHOLD), older, oldest]
    assert got["one"]["frozen"] > 0 and got["one"]["thresholds"] == raised
    assert got["frames"] > 0  # the engines run under it
    assert got["one_left"]["frozen"] > 0 and got["one_left"]["thresholds"] == raised
    assert got["none_left"] == before
