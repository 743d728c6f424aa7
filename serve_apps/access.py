"""Who may call what: desk credentials and model visibility, from the config. No Ray.

A model is callable by a desk if it is public, or the desk owns it, or the desk lists it in
`desks[].models`. Credentials are compared in constant time against every desk's hash, so the
time taken does not reveal which desk (if any) a token nearly matched.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

from rayfin.auth import match_credential


@dataclass(frozen=True)
class ModelEntry:
    name: str
    kind: str
    owner: str
    public: bool


@dataclass(frozen=True)
class AccessPolicy:
    credentials: tuple[tuple[str, str], ...]        # (desk, sha256 hex of its token)
    models: tuple[ModelEntry, ...]
    grants: tuple[tuple[str, tuple[str, ...]], ...]  # (desk, private models it lists)

    @classmethod
    def from_config(cls, config) -> "AccessPolicy":
        return cls(
            credentials=tuple((d.name, d.credential_sha256) for d in config.desks),
            models=tuple(ModelEntry(m.name, m.kind, m.owner, m.public) for m in config.serve.models),
            grants=tuple((d.name, tuple(d.models)) for d in config.desks),
        )

    def to_dict(self) -> dict:
        """Plain data for shipping to Serve replicas (see `from_dict`)."""
        return {"credentials": [list(c) for c in self.credentials],
                "models": [vars(m) for m in self.models],
                "grants": {d: list(ms) for d, ms in self.grants}}

    @classmethod
    def from_dict(cls, data: dict) -> "AccessPolicy":
        return cls(credentials=tuple((d, h) for d, h in data["credentials"]),
                   models=tuple(ModelEntry(**m) for m in data["models"]),
                   grants=tuple((d, tuple(ms)) for d, ms in data["grants"].items()))

    def authenticate(self, token: str | None) -> str | None:
        """The desk whose credential this token is, or None."""
        return match_credential(token, self.credentials)

    def model(self, name: str) -> ModelEntry | None:
        for m in self.models:
            if m.name == name:
                return m
        return None

    def may_call(self, desk: str, model: ModelEntry) -> bool:
        if model.public or model.owner == desk:
            return True
        return model.name in self._grants_by_desk.get(desk, ())

    @functools.cached_property
    def _grants_by_desk(self) -> dict[str, tuple[str, ...]]:
        return dict(self.grants)

    def callable_models(self, desk: str) -> list[ModelEntry]:
        return [m for m in self.models if self.may_call(desk, m)]


def bearer_token(header: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, else None."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def header_value(headers, name: bytes) -> bytes | None:
    """The first value of a header in ASGI form ([(lowercase name, value)]), else None."""
    for k, v in headers or ():
        if k == name:
            return v
    return None


def bearer_of(headers) -> str | None:
    """The bearer token of a request's ASGI headers, else None."""
    authorization = header_value(headers, b"authorization")
    return bearer_token(authorization.decode("latin-1")) if authorization is not None else None
