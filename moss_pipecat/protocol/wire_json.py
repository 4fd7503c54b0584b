"""What the JSON messages of both directions share: a message is sent as built, as compact
JSON; a discriminated union's ``type`` table; validation errors in one line."""

from __future__ import annotations

import json
from typing import Any, get_args

from pydantic import BaseModel, ValidationError


class WireModel(BaseModel):
    """A message of either direction, sent as built."""

    def to_json(self) -> str:
        """Compact JSON: ``type`` and the fields given when the message was made (null
        included); fields left to their defaults are not sent (they mean the same)."""
        body = self.model_dump(mode="json", exclude_unset=True)
        return dumps({"type": self.type, **body})  # type: ignore[attr-defined]


def by_type(union: Any) -> dict[str, type[WireModel]]:
    """``type`` value -> model, for the members of a discriminated union."""
    members = get_args(get_args(union)[0])  # Annotated[A | B | ..., ...] -> (A, B, ...)
    return {m.model_fields["type"].default: m for m in members}


def problems(e: ValidationError, skip: int = 0) -> str:
    """A validation error in one line: its first five problems, locations from ``skip`` on (a
    check's own message as it wrote it)."""
    out = []
    for err in e.errors()[:5]:
        where = ".".join(str(p) for p in err["loc"][skip:])
        msg = err["msg"].removeprefix("Value error, ")
        out.append(f"{where}: {msg}" if where else msg)
    return "; ".join(out)


def dumps(msg: dict[str, Any]) -> str:
    """Compact JSON for the wire."""
    return json.dumps(msg, separators=(",", ":"), ensure_ascii=False)
