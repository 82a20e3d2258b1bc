"""How the server words its errors: in OpenAI's shape (``{"error": {"message", "type", "param",
"code"}}``) on OpenAI's routes, whose clients show only that message, and in FastAPI's
(``{"detail": ...}``) elsewhere; invalid bodies described in words, naming the field, with no
library internals and never more than a few hundred characters of what the client sent.
"""

from __future__ import annotations

import json
from typing import Any

OPENAI_ROUTES = ("/v1/completions", "/v1/chat/completions", "/v1/models")

ECHOED_CHARS = 100  # at most this much of a text the client sent is repeated in an error
MAX_ERRORS = 5  # validation errors described in one answer

# Type errors from a union's members, worded by what was expected ("expected text or a list").
EXPECTED = {
    "string_type": "text",
    "list_type": "a list",
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "dict_type": "an object",
    "model_type": "an object",
    "model_attributes_type": "an object",
    "none_required": "null",
}


def is_openai_route(path: str) -> bool:
    return path in OPENAI_ROUTES


def openai_error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    kind = "invalid_request_error" if status < 500 else "server_error"
    if status == 401:
        kind = "authentication_error"
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def error_body(path: str, status: int, message: str, param: str | None = None, code: str | None = None) -> bytes:
    """The JSON body of an error for a request to ``path``, in the shape its clients read."""
    shaped = openai_error_body(status, message, param, code) if is_openai_route(path) else {"detail": message}
    return json.dumps(shaped, ensure_ascii=True).encode()


def shortened(value: Any) -> Any:
    """What an error repeats of an input: short values as they are, long texts cut, and big lists
    and objects only counted (a 100,000-item list must not come back whole)."""
    if isinstance(value, str):
        return value if len(value) <= ECHOED_CHARS else f"{value[:ECHOED_CHARS]}... ({len(value):,} characters)"
    if isinstance(value, list | tuple):
        return (
            [shortened(v) for v in value]
            if len(json.dumps(value, default=str)) <= 2 * ECHOED_CHARS
            else (f"a list of {len(value):,} items")
        )
    if isinstance(value, dict):
        return (
            value
            if len(json.dumps(value, default=str)) <= 2 * ECHOED_CHARS
            else f"an object with {len(value):,} fields"
        )
    return value


def _is_union_tag(part: Any) -> bool:
    """pydantic names the member of a union an error came from in its location
    (``function-after[encodable(), str]``, ``list[str]``, ``int``): not a field the client wrote."""
    return isinstance(part, str) and ("[" in part or "(" in part or part in {"str", "int", "float", "bool", "none"})


def field_name(loc: tuple | list) -> str:
    """``messages[0].content`` from pydantic's ``("body", "messages", 0, "content")``."""
    name = ""
    for part in loc:
        if part in ("body", "query", "path") and not name:
            continue
        if _is_union_tag(part):
            continue
        name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else str(part))
    return name


def _words(error: dict[str, Any]) -> str:
    kind, msg, ctx = error.get("type", ""), str(error.get("msg", "invalid")), error.get("ctx") or {}
    if kind == "missing":
        return "required"
    if kind in EXPECTED:
        return f"expected {EXPECTED[kind]}"
    if kind in ("string_too_short", "too_short") and ctx.get("min_length") == 1:
        return "must not be empty"
    if kind == "value_error":
        return msg.removeprefix("Value error, ")
    if kind == "extra_forbidden":
        return "unknown field"
    return msg.replace("Input should", "should").replace("Value should", "should").replace(" after validation", "")


def _collapse_unions(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One error per field a union tried: where one member got further (an item of the list),
    its error alone; where each member only refused the type, one "expected A or B"."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    order: list[tuple] = []
    for error in errors:
        loc = tuple(error.get("loc", ()))
        tag = next((i for i, part in enumerate(loc) if _is_union_tag(part)), None)
        key = loc if tag is None else loc[:tag]
        if key not in groups:
            order.append(key)
        groups.setdefault(key, []).append(error)
    out = []
    for key in order:
        members = groups[key]
        deeper = [e for e in members if len(e.get("loc", ())) > len(key) + 1]
        if len(members) == 1 or (deeper and len(deeper) < len(members)):
            out.extend(deeper or members)
            continue
        expected = [EXPECTED[e["type"]] for e in members if e.get("type") in EXPECTED]
        if len(expected) == len(members):
            merged = {**members[0], "loc": key, "type": "type_error", "msg": "", "ctx": None}
            merged["words"] = "expected " + " or ".join(dict.fromkeys(expected))
            out.append(merged)
        else:
            out.extend(members)
    return out


def described(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """pydantic's validation errors as FastAPI's ``detail`` items, in words: ``loc`` without
    union tags, ``msg`` naming the problem, ``input`` shortened; no ``ctx`` or ``url``."""
    out: list[dict[str, Any]] = []
    errors = _collapse_unions(errors)
    if len(errors) > MAX_ERRORS:  # one per bad item of a long list: the first few say enough
        more = len(errors) - MAX_ERRORS
        errors = [*errors[:MAX_ERRORS], {"loc": ["body"], "type": "more_errors", "words": f"and {more:,} more errors"}]
    for error in errors:
        loc = [part for part in error.get("loc", ()) if not _is_union_tag(part)]
        if error.get("type") == "json_invalid":
            detail = (error.get("ctx") or {}).get("error", "")
            where = f" at character {loc[-1]}" if loc and isinstance(loc[-1], int) else ""
            message = f"the body is not valid JSON{where}" + (f": {detail}" if detail else "")
            out.append({"loc": ["body"], "msg": message, "type": "json_invalid"})
            continue
        if loc == ["body"] and error.get("type") in ("missing", *EXPECTED):
            out.append({"loc": loc, "msg": "expected a JSON object", "type": error["type"]})
            continue
        item = {"loc": loc, "msg": error.get("words") or _words(error), "type": error.get("type", "invalid")}
        if "input" in error:
            item["input"] = shortened(error["input"])
        out.append(item)
    return out


def first_problem(errors: list[dict[str, Any]]) -> tuple[str, str | None]:
    """``(message, field)`` of the first described error, as one line for OpenAI's clients."""
    first = errors[0]
    if first.get("type") == "json_invalid":
        return first["msg"], None
    name = field_name(first["loc"])
    return f"{name or 'the body'}: {first['msg']}", (name or None)
