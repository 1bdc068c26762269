"""Reading settings into frozen Structs: TOML text first, then environment overrides.

Pure: the caller reads the file and passes the environment mapping, so tests can
give both explicitly and nothing is read at import time.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from typing import Any, TypeVar

import msgspec

__all__ = ["SettingsError", "load_settings_struct"]

S = TypeVar("S", bound=msgspec.Struct)


class SettingsError(ValueError):
    """Settings that cannot be used; the text names the setting."""


def load_settings_struct(
    cls: type[S],
    *,
    toml_text: str | None = None,
    env: Mapping[str, str] | None = None,
    env_prefix: str,
    section: str | None = None,
) -> S:
    """Build ``cls`` from TOML (optionally one ``[section]`` of it) and ``PREFIX_FIELD`` vars.

    Environment values are strings; msgspec converts them (``strict=False``) to the
    field's type, so ``BACKROOM_HTTP_PORT=8001`` becomes an int.
    """
    data: dict[str, Any] = {}
    if toml_text:
        try:
            parsed = tomllib.loads(toml_text)
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"settings file is not valid TOML: {exc}") from exc
        data.update(parsed.get(section, {}) if section else parsed)
    for field in msgspec.structs.fields(cls):
        key = f"{env_prefix}{field.name.upper()}"
        if env is not None and key in env:
            data[field.name] = env[key]
    try:
        return msgspec.convert(data, cls, strict=False)
    except msgspec.ValidationError as exc:
        raise SettingsError(f"bad setting: {exc}") from exc
