"""Writes a conforming tiny MOSS fixture set (goldens from moss_pipecat's own code).

    .venv/bin/python scripts/make_fixtures.py --seed 1 --out /tmp/alt1 --no-voice --hidden 48
    MOSS_FIXTURES=/tmp/alt1 .venv/bin/python -m pytest -q

Every size not given is drawn from the seed; ``--help`` lists them.
"""

from moss_pipecat.testing.fixtures import main

if __name__ == "__main__":
    main()
