"""Prints pip constraints that pin each of pyproject's direct dependencies to its lower bound.

    python3 scripts/floors.py > floors.txt
    pip install -e ".[engine,serve]" -c floors.txt

The floors live in pyproject alone; this reads them from the base dependencies and the extras a
user installs for the engine and the server (``engine``, ``serve``), so the suite can run on the
lowest versions pyproject allows (``scripts/check_floors.sh``). Left out: the ``dev`` extra (the
tools of this repository, not of its users), ``agents`` and ``tracing`` (examples' and pipecat's
own extras), the package's references to itself, and the names in ``--skip`` (torch: these
machines have one build of it).
"""

from __future__ import annotations

import argparse
import re
import tomllib
from pathlib import Path

EXTRAS = ("engine", "serve")
# The standard library only (no ``packaging``): check_floors.sh runs this with the machine's
# python3, before any venv exists. The floors are plain release numbers, so a tuple compares them.
# name, optional [extras], then a ">=" bound among the specifiers (before any ';' marker)
_REQ = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*([^;]*)")
_FLOOR = re.compile(r">=\s*([0-9][0-9A-Za-z.+!-]*)")


def floors(pyproject: Path, skip: set[str]) -> dict[str, str]:
    """{normalized name: lowest version} for every direct dependency with a ``>=`` bound; a
    name required in several places keeps its highest floor (pip needs all of them)."""
    project = tomllib.loads(pyproject.read_text())["project"]
    self_name = _normal(project["name"])
    reqs = list(project.get("dependencies", []))
    for extra in EXTRAS:
        reqs += project["optional-dependencies"][extra]
    out: dict[str, str] = {}
    for req in reqs:
        m = _REQ.match(req)
        if m is None:
            raise ValueError(f"cannot read requirement {req!r}")
        name, specs = _normal(m[1]), m[2]
        bound = _FLOOR.search(specs)
        if name == self_name or name in skip or bound is None:
            continue
        if name not in out or _key(bound[1]) > _key(out[name]):
            out[name] = bound[1]
    return out


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()  # PEP 503


def _key(version: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", version))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--pyproject", type=Path, default=Path(__file__).parent.parent / "pyproject.toml"
    )
    ap.add_argument("--skip", nargs="*", default=["torch"])
    args = ap.parse_args()
    for name, version in sorted(floors(args.pyproject, {_normal(s) for s in args.skip}).items()):
        print(f"{name}=={version}")


if __name__ == "__main__":
    main()
