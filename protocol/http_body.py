"""The JSON-body rule of both HTTP APIs: a number is a JSON number, a boolean a JSON
boolean, never text that looks like one.

The web framework converts a request body to the route's Struct leniently: an amount
in cents sent as ``"100.00"`` was taken as 100 (1.00, where the cashier's app meant 100
euros), ``"1e2"`` as 100, ``"true"`` as true, each answered as if sent right.
Installed once per app as a plugin (:class:`StrictBodyRule`): its guard decodes the
body strictly as the route's body type; what only the lenient conversion accepts is
refused with the framework's own 422 (a :class:`ValidationException`, mapped to the
app's problem naming the field). A body the framework refuses anyway is left to it, so
its words for those stay as they were.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import msgspec
from litestar import Request
from litestar.exceptions import ValidationException
from litestar.plugins import InitPlugin

if TYPE_CHECKING:
    from litestar.config.app import AppConfig
    from litestar.connection import ASGIConnection
    from litestar.handlers.base import BaseRouteHandler

__all__ = ["StrictBodyRule", "coerced_fields"]

# msgspec's "Expected `int`, got `str` - at `$.lines[0].quantity`".
_AT = re.compile(r"^(?P<message>.*?) - at `\$(?P<path>[^`]*)`$")


def coerced_fields(raw: bytes, body_type: Any) -> list[dict[str, str]] | None:
    """The field a lenient conversion of the JSON ``raw`` to ``body_type`` would take
    from text (as the framework's error ``extra``), or None when the body is sound or
    refused by the lenient conversion as well."""
    try:
        msgspec.json.decode(raw, type=body_type, strict=True)
    except msgspec.ValidationError as strict_error:
        try:
            msgspec.convert(msgspec.json.decode(raw), body_type, strict=False)
        except (msgspec.ValidationError, msgspec.DecodeError):
            return None
        found = _AT.match(str(strict_error))
        message, path = (found["message"], found["path"]) if found else (str(strict_error), "")
        return [
            {
                "key": path.removeprefix(".") or "body",
                "message": f"{message}: send it as a JSON value of that type, not as text",
                "source": "body",
            }
        ]
    except msgspec.DecodeError:
        return None
    return None


class StrictBodyRule(InitPlugin):
    """Adds the app-level guard refusing a JSON body the framework would convert from
    text, after the app's own guards (a request refused for its token is refused for
    that first)."""

    __slots__ = ()

    def on_app_init(self, app_config: AppConfig) -> AppConfig:
        app_config.guards = [*app_config.guards, _refuse_coerced]
        return app_config


async def _refuse_coerced(
    connection: ASGIConnection[Any, Any, Any, Any], _handler: BaseRouteHandler
) -> None:
    body = connection.route_handler.parsed_fn_signature.parameters.get("data")
    if body is None or not isinstance(connection, Request):
        return
    raw = await connection.body()
    if not raw:
        return
    extra = coerced_fields(raw, body.annotation)
    if extra is not None:
        # The framework's own words for a body it refuses (the problem's detail).
        detail = f"Validation failed for {connection.method} {connection.url.path}"
        raise ValidationException(detail=detail, extra=extra)
