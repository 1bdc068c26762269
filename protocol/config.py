"""Reading settings into frozen Structs: TOML text first, then environment overrides.

The loader is pure: the caller reads the file (``read_settings_file``) and passes the
environment mapping, so tests can give both explicitly and nothing is read at import
time.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import msgspec.inspect

__all__ = [
    "SettingsError",
    "load_settings_file_or_env",
    "load_settings_struct",
    "read_settings_file",
    "unknown_env_settings",
]

S = TypeVar("S", bound=msgspec.Struct)


class SettingsError(ValueError):
    """Settings that cannot be used; the text names the setting."""


# msgspec's words for a key the Struct does not have (forbid_unknown_fields), and where.
_UNKNOWN_FIELD = re.compile(
    r"^Object contains unknown field `(?P<name>[^`]+)`(?: - at `\$\.?(?P<at>[^`]*)`)?$"
)


def read_settings_file(path: str | os.PathLike[str]) -> str:
    """The text of a settings file; one that cannot be read is a SettingsError naming it."""
    try:
        return Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise SettingsError(f"settings file {str(path)!r}: {reason}") from exc


def unknown_env_settings(
    cls: type[msgspec.Struct],
    env: Mapping[str, str],
    env_prefix: str,
    *,
    other_prefixes: Iterable[str] = (),
) -> list[str]:
    """``PREFIX_*`` variables that name no field of ``cls`` (nor start with one of
    ``other_prefixes``, variables of other programs sharing the prefix): a typo there is
    ignored by the loader, so the caller warns about them."""
    names = {f"{env_prefix}{f.name.upper()}" for f in msgspec.structs.fields(cls)}
    others = tuple(other_prefixes)
    return sorted(
        key
        for key in env
        if key.startswith(env_prefix) and key not in names and not key.startswith(others)
    )


def _check_only_section(parsed: Mapping[str, Any], section: str) -> None:
    """The file holds ``[section]`` alone: another table (``[nat]``, a misspelt
    ``[centrl]``) or a key above the heading would otherwise be ignored, and the
    settings it meant left at their defaults."""
    for key, value in parsed.items():
        if key == section:
            continue
        if isinstance(value, dict) or (
            isinstance(value, list) and value and all(isinstance(v, dict) for v in value)
        ):
            raise SettingsError(f"unknown section [{key}]: the settings go in [{section}]")
        raise SettingsError(f"{key!r} is outside [{section}]: the settings go in [{section}]")


def load_settings_struct(
    cls: type[S],
    *,
    toml_text: str | None = None,
    env: Mapping[str, str] | None = None,
    env_prefix: str,
    section: str | None = None,
    source: str | None = None,
) -> S:
    """Build ``cls`` from TOML (optionally one ``[section]`` of it) and ``PREFIX_FIELD`` vars.

    Environment values are strings; msgspec converts them (``strict=False``) to the
    field's type, so ``BACKROOM_HTTP_PORT=8001`` becomes an int. A key of the file the
    Struct does not know is refused (the Structs forbid unknown fields): a misspelt
    ``nats_cred`` would otherwise be ignored and the default used; so is, with a
    ``section``, any other table or key of the file. ``source`` (the file's name) is
    named in every error about the settings.
    """
    # The file is named in every error, as for text that is not TOML: a technician may
    # have several.
    where = f"settings file {source!r}: " if source else ""
    data: dict[str, Any] = {}
    if toml_text:
        try:
            parsed = tomllib.loads(toml_text)
        except tomllib.TOMLDecodeError as exc:
            named = f" {source!r}" if source else ""
            raise SettingsError(f"settings file{named} is not valid TOML: {exc}") from exc
        if section:
            try:
                _check_only_section(parsed, section)
            except SettingsError as exc:
                raise SettingsError(f"{where}{exc}") from exc
        chosen = parsed.get(section, {}) if section else parsed
        if not isinstance(chosen, dict):
            raise SettingsError(f"{where or 'settings file: '}[{section}] is not a table")
        data.update(chosen)
    from_env: dict[str, str] = {}
    for field in msgspec.structs.fields(cls):
        key = f"{env_prefix}{field.name.upper()}"
        if env is not None and key in env:
            if isinstance(msgspec.inspect.type_info(field.type), _TABLES):
                # Text cannot hold a table (the agent's tills): else a conversion error.
                raise SettingsError(
                    f"environment variable {key}: {field.name} is set in the settings file only"
                )
            data[field.name] = env[key]
            from_env[field.name] = key
    try:
        return msgspec.convert(data, cls, strict=False)
    except msgspec.ValidationError as exc:
        unknown = _UNKNOWN_FIELD.match(str(exc))
        if unknown is not None:
            at = unknown["at"]
            name = f"{at}.{unknown['name']}" if at else unknown["name"]
            raise SettingsError(f"{where}unknown setting {name!r}") from exc
        # A value from the environment is named by its variable, not by the file: the
        # technician would look for it in the file, where it is not.
        key = from_env.get(_field_at_fault(str(exc)), "")
        if key:
            # Its value is not repeated: it may be a password or a URL holding one. Every
            # variable is text: "got `str`" said nothing.
            reason = re.sub(r"^Expected `(\w+)`, got `str`", r"not a valid `\1`", str(exc))
            raise SettingsError(f"bad setting: environment variable {key}: {reason}") from exc
        raise SettingsError(f"{where}bad setting: {exc}") from exc


_TABLES = (
    msgspec.inspect.CollectionType,
    msgspec.inspect.TupleType,
    msgspec.inspect.DictType,
    msgspec.inspect.StructType,
)
# Where msgspec puts the field of a failed conversion (`- at `$.http_port``), or the
# ``name:`` our __post_init__ checks start their message with.
_AT_FIELD = re.compile(r" - at `\$\.(?P<name>[A-Za-z_][A-Za-z0-9_]*)")
_LEADING_FIELD = re.compile(r"^(?P<name>[a-z_][a-z0-9_]*):")


def _field_at_fault(message: str) -> str:
    found = _AT_FIELD.search(message) or _LEADING_FIELD.match(message)
    return found["name"] if found else ""


def load_settings_file_or_env(
    cls: type[S],
    config_file: str | os.PathLike[str] | None,
    env: Mapping[str, str] | None,
    *,
    config_env: str,
    env_prefix: str,
    section: str,
) -> S:
    """A process's settings: the TOML file given (else the one the ``config_env``
    variable names, if any) under ``[section]``, overridden by ``env_prefix`` variables
    of ``env`` (the process environment when None)."""
    env = os.environ if env is None else env
    path = config_file or env.get(config_env)
    return load_settings_struct(
        cls,
        toml_text=read_settings_file(path) if path else None,
        env=env,
        env_prefix=env_prefix,
        section=section,
        source=str(path) if path else None,
    )
