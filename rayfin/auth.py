"""The one credential check: a presented token against stored sha256 hashes, in constant time.

Configs store only each token's sha256 (hex). The controller (rayfin.controller.auth) and the
serving gateway's access policy both decide "which desk is this token" here, so the rule (hash,
constant-time compare, look at every credential so timing does not tell which one matched)
lives in one place. Pure: hashlib and hmac only.
"""
from __future__ import annotations

import hashlib
import hmac
from typing import Iterable


def hash_token(token: str) -> str:
    """What a config stores for a token: its sha256, hex."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def token_matches(token: str | None, credential_sha256: str) -> bool:
    """Whether `token` hashes to `credential_sha256`, compared in constant time."""
    if not token:
        return False
    return hmac.compare_digest(hash_token(token), credential_sha256)


def secret_matches(token: str | None, secret: str | None) -> bool:
    """Whether `token` is `secret` itself (a key held in memory, never stored), in constant time."""
    if not token or not secret:
        return False
    return hmac.compare_digest(token.encode(), secret.encode())


def match_credential(token: str | None, credentials: Iterable[tuple[str, str]]) -> str | None:
    """The name (a desk) whose stored hash `token` matches, or None. Every credential is compared,
    with no early exit, so the time taken does not reveal which one matched."""
    if not token:
        return None
    digest = hash_token(token)
    found = None
    for name, expected in credentials:
        if hmac.compare_digest(digest, expected) and found is None:
            found = name
    return found


__all__ = ["hash_token", "token_matches", "secret_matches", "match_credential"]
