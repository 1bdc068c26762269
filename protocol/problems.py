"""RFC 9457 problem details: the error body of every Backroom HTTP API."""

from __future__ import annotations

import re
from typing import Any

import msgspec

__all__ = [
    "BEARER_CHALLENGE",
    "NOT_UTF8_DETAIL",
    "FieldError",
    "Problem",
    "is_not_utf8",
    "not_utf8_problem",
    "problem_title",
    "validation_errors",
]


class FieldError(msgspec.Struct, frozen=True, kw_only=True):
    field: str
    message: str


class Problem(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """``application/problem+json``; ``errors`` names each field at fault."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None
    errors: tuple[FieldError, ...] = ()
    extra: dict[str, Any] | None = None


# A 401 of either API says how to authenticate (RFC 9110 11.6.1).
BEARER_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="backroom"'}

NOT_UTF8_DETAIL = "request body is not valid UTF-8 JSON"
# msgspec 0.23 reports a JSON string holding bytes that are not UTF-8 as a DecodeError
# with this text (which the web framework makes a 400 of its own); earlier releases
# raised UnicodeDecodeError. Both are the one refusal below.
_MSGSPEC_NOT_UTF8 = "Invalid UTF-8 encoded string"


def is_not_utf8(exc: BaseException) -> bool:
    """A request refused because its JSON body is not UTF-8, as any msgspec says it."""
    if isinstance(exc, UnicodeDecodeError):
        return True
    texts = (str(getattr(exc, "detail", "")), str(exc.__cause__ or ""))
    return any(_MSGSPEC_NOT_UTF8 in text for text in texts)


def not_utf8_problem(instance: str) -> Problem:
    """Nothing was parsed, hence nothing recorded: the client's error, a 400."""
    return Problem(
        title="Bad request",
        status=400,
        detail=NOT_UTF8_DETAIL,
        instance=instance,
        errors=(FieldError(field="body", message="not valid UTF-8"),),
    )


_MISSING_PARAMETER = re.compile(r"Missing required (?P<kind>\w+) parameter '(?P<name>[^']+)'")
_UNKNOWN_FIELD = re.compile(r"unknown field `(?P<name>[^`]+)`")
# msgspec names the missing field in its message and the object holding it in the path.
_MISSING_FIELD = re.compile(
    r"missing required field `(?P<name>[^`]+)`(?: - at `\$\.?(?P<at>[^`]*)`)?"
)
# What the web framework calls the body itself when the fault is at its top level.
_WHOLE_BODY = frozenset({"data", "body"})
# msgspec's path of a fault inside a list body ("$.data[3].include" in the framework's
# signature model, "$[3].include" alone): the framework keeps only object paths ("$.sku")
# and names the rest "data".
_LIST_PATH = re.compile(r" - at `\$(?:\.data)?(?P<path>\[[^`]*)`$")


def _required_fields(body_type: Any) -> list[str]:
    """The fields a body Struct cannot do without (no default)."""
    if not isinstance(body_type, type) or not issubclass(body_type, msgspec.Struct):
        return []
    info = msgspec.inspect.type_info(body_type)
    assert isinstance(info, msgspec.inspect.StructType)
    return [f.encode_name for f in info.fields if f.required]


def _optional(info: Any) -> Any:
    """``T | None`` as ``T`` (an optional field's hint is its type's)."""
    if isinstance(info, msgspec.inspect.UnionType):
        types = [t for t in info.types if not isinstance(t, msgspec.inspect.NoneType)]
        if len(types) == 1:
            return types[0]
    return info


def _unwrapped(info: Any) -> Any:
    """The Struct a field holds, through lists, metadata and ``| None``."""
    while True:
        info = _optional(info)
        if isinstance(info, msgspec.inspect.Metadata):
            info = info.type
        elif isinstance(info, msgspec.inspect.ListType):
            info = info.item_type
        else:
            return info


def _field_hint(body_type: Any, path: str) -> str | None:
    """The ``hint`` a body field's ``msgspec.Meta(extra=...)`` carries (e.g.
    ``protocol.units.MinorUnits``), found by the error's path ("lines[0].price")."""
    if body_type is None:
        return None
    try:
        info: Any = msgspec.inspect.type_info(body_type)
    except (TypeError, ValueError):
        return None
    for name in re.sub(r"\[\d+\]", "", path).split("."):
        info = _unwrapped(info)
        if not isinstance(info, msgspec.inspect.StructType):
            return None
        field = next((f for f in info.fields if f.encode_name == name), None)
        if field is None:
            return None
        info = _optional(field.type)
    if isinstance(info, msgspec.inspect.Metadata) and info.extra:
        hint = info.extra.get("hint")
        return str(hint) if hint else None
    return None


def validation_errors(
    extra: Any, detail: str, body_type: Any = None, cause: BaseException | None = None
) -> tuple[FieldError, ...]:
    """The fields at fault of a request the web framework refused: its ``extra`` list
    (``key`` or ``source``, ``message``), with an unknown or missing field named by
    itself (not by the object holding it, "data" at the top level; a missing one by its
    path), a missing body (the framework says only ``'data'``, its KeyError) as each
    required field of ``body_type`` (the route's body Struct), or ``body``, and a
    missing parameter, which the framework names only in ``detail``. A fault inside a
    list body is named by its path (``[3].include``) from ``cause``, msgspec's error;
    one of the body as a whole (a list where an object is expected) is ``body``."""
    list_path = (
        _LIST_PATH.search(str(cause)) if isinstance(cause, msgspec.ValidationError) else None
    )
    body_path = list_path["path"] if list_path is not None else ""
    errors: list[FieldError] = []
    if isinstance(extra, list):
        for item in extra:
            if not isinstance(item, dict):
                continue
            key = str(item.get("key") or item.get("source") or "body")
            message = str(item.get("message", ""))
            if key in _WHOLE_BODY and message == f"'{key}'":
                required = _required_fields(body_type)
                names = ", ".join(f"`{name}`" for name in required)
                errors += [
                    FieldError(field=name, message=f"required: send a JSON body with {names}")
                    for name in required
                ] or [FieldError(field="body", message="required: send a JSON object body")]
                continue
            unknown = _UNKNOWN_FIELD.search(message)
            missing_field = _MISSING_FIELD.search(message)
            if unknown is not None:
                name = unknown["name"]
                at = body_path if key in _WHOLE_BODY else key
                key = f"{at}.{name}" if at else name
            elif missing_field is not None:
                # Named by its path ("lines[0].sku"), not by the object holding it (the
                # framework's key, or msgspec's "at" when the message keeps it).
                at = missing_field["at"] or (body_path if key in _WHOLE_BODY else key)
                name = missing_field["name"]
                key = f"{at}.{name}" if at else name
            elif key in _WHOLE_BODY:
                key = body_path or "body"
            elif message.startswith("Expected"):
                hint = _field_hint(body_type, key)
                message = f"{message}: {hint}" if hint else message
            errors.append(FieldError(field=key, message=message))
    missing = _MISSING_PARAMETER.match(detail)
    if missing is not None and not errors:
        errors.append(
            FieldError(
                field=missing["name"], message=f"missing required {missing['kind']} parameter"
            )
        )
    return tuple(errors)


_TITLES = {
    400: "Bad request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    413: "Request body too large",
    422: "Invalid input",
    429: "Too many requests",
}


def problem_title(status: int) -> str:
    """The short title both APIs give a problem of this HTTP status."""
    return _TITLES.get(status, "Error")
