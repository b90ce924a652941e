"""Pure comparisons of a desired object with what the API server holds.

Two questions per owned object, before any write:
- Who controls it? Only an object whose controller owner reference carries this ModelService's
  uid is ours to change. Anything else under the same name (a user's Service `web`, an object
  left by an earlier ModelService of that name that the garbage collector has not removed yet)
  is left untouched and reported as a conflict.
- Has it drifted? `covers(observed, desired)`: every field the operator sets has the value it
  sets. Fields the operator does not set are not its business (server-side apply leaves other
  field managers' fields alone): `kubectl set env FOO=bar` or a hand-added `hostNetwork` stay.
  A list of named items (containers, env, ports, volumes) is compared by name, so an item added
  by someone else is not drift either; other lists must match item by item.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum
from typing import Any


class Control(Enum):
    ABSENT = "absent"
    OURS = "ours"
    FOREIGN = "foreign"


def controller_uid(obj: Mapping[str, Any]) -> str | None:
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return str(ref.get("uid"))
    return None


def control(obj: Mapping[str, Any] | None, uid: str) -> Control:
    if obj is None:
        return Control.ABSENT
    return Control.OURS if controller_uid(obj) == uid else Control.FOREIGN


def describe_foreign(obj: Mapping[str, Any]) -> str:
    """Who controls `obj`, for the ResourceConflict message."""
    md = obj.get("metadata") or {}
    for ref in md.get("ownerReferences") or []:
        if ref.get("controller"):
            return f"controlled by {ref.get('kind')} {ref.get('name')} (uid {ref.get('uid')})"
    return "not created by this ModelService"


# The API server leaves out empty strings, lists and maps (omitempty): not drift.
_OMITTED: tuple[Any, ...] = ("", [], {})


def _named(items: list[Any]) -> bool:
    return bool(items) and all(isinstance(i, Mapping) and "name" in i for i in items)


def covers(observed: Any, desired: Any) -> bool:
    """Whether `observed` has every field of `desired` with the same value."""
    if isinstance(desired, Mapping):
        if not isinstance(observed, Mapping):
            return False
        return all(
            covers(observed[k], v) if k in observed else v in _OMITTED for k, v in desired.items()
        )
    if isinstance(desired, list):
        if not isinstance(observed, list):
            return False
        if _named(desired) and _named(observed):
            by_name = {i["name"]: i for i in observed}
            return all(d["name"] in by_name and covers(by_name[d["name"]], d) for d in desired)
        return len(observed) == len(desired) and all(
            covers(o, d) for o, d in zip(observed, desired, strict=True)
        )
    return bool(observed == desired)
