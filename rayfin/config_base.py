"""The base of rayfin's config tree: one pydantic base model and one way to report errors.

Every section of the config is a `ConfigModel` (frozen, unknown fields refused). Sections whose
models live with their features (`rayfin.autoscale.config`, `rayfin.telemetry.config`) import
this module, not `rayfin.config`, which imports them: so the tree is built in one direction.
`config_error_from` turns a pydantic `ValidationError` into one `ConfigError` listing every
problem as `field.path: got VALUE; what is allowed`.
"""
from __future__ import annotations

import re
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from rayfin.errors import ConfigError

NAME_RE = r"^[a-z][a-z0-9-]{0,31}$"
Name = Annotated[str, Field(pattern=NAME_RE)]
SHA256_RE = r"^[0-9a-f]{64}$"


class ConfigModel(BaseModel):
    """A section (or part of one) of the config: immutable, and a misspelt field is an error."""

    model_config = ConfigDict(extra="forbid", frozen=True)


M = TypeVar("M", bound=ConfigModel)


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(root)"


_BOUNDS = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}


def _explain(err: Any) -> str:
    kind, ctx = err.get("type", ""), err.get("ctx") or {}
    if kind == "extra_forbidden":
        return "unknown field; remove it or check its spelling"
    if kind == "missing":
        return "required field is missing"
    if kind == "string_pattern_mismatch":
        pat = ctx.get("pattern", "")
        if pat == NAME_RE:
            return "must be a lowercase name: a letter, then letters, digits or '-', at most 32 characters"
        if pat == SHA256_RE:
            return "must be 64 lowercase hex characters (sha256 of the token; `rayfin hash-token TOKEN`)"
        return f"must match {pat}"
    if kind in _BOUNDS:
        bound = next(iter(ctx.values()), "?")
        return f"must be {_BOUNDS[kind]} {bound}"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected', '')}"
    msg: str = err.get("msg", "invalid")
    return msg.removeprefix("Value error, ")


def _redacted(value: Any) -> Any:
    """A value fit to echo in an error: a password inside a URL is replaced by ***."""
    if isinstance(value, str) and "://" in value:
        value = re.sub(r"(://[^:/@]*):[^@]*@", r"\1:***@", value)
        return re.sub(r"(?i)([?&]password=)[^&]*", r"\1***", value)
    return value


def config_error_from(exc: ValidationError, source: str, prefix: str = "") -> ConfigError:
    """One ConfigError listing every problem as `path: got VALUE; what is allowed`. `prefix` is
    the section a part of the tree was validated under on its own (e.g. "autoscaling")."""
    problems = []
    lines = []
    for err in exc.errors():
        loc = _loc(err["loc"]) if err["loc"] else ""
        path = ".".join(p for p in (prefix, loc) if p) or "(root)"
        value = _redacted(err.get("input"))
        shown = "" if err.get("type") == "missing" or isinstance(value, dict) else f": got {value!r}"
        allowed = _explain(err)
        problems.append((path, value, allowed))
        lines.append(f"  {path}{shown}; {allowed}")
    head = f"{source}: {len(problems)} problem{'s' if len(problems) > 1 else ''}"
    return ConfigError(head + "\n" + "\n".join(lines), path=problems[0][0], problems=problems)


def parse_section(model: type[M], data: Any, *, section: str, source: str, what: str = "") -> M:
    """Validate one section on its own (a CLI flag, a test, the environment): a model passes
    through, None is the defaults, a mapping is validated with `section.<field>` paths."""
    if data is None:
        data = {}
    if isinstance(data, model):
        return data
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: must be a mapping{what}; got {type(data).__name__}", path=section)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise config_error_from(exc, source, prefix=section) from None


__all__ = ["NAME_RE", "SHA256_RE", "Name", "ConfigModel", "config_error_from", "parse_section"]
