"""Who is calling the controller: a desk, the operator (admin credential), or `rayfin up`
(the deploy key, which may only reserve and release serving capacity)."""
from __future__ import annotations

from dataclasses import dataclass

from rayfin.auth import match_credential, secret_matches, token_matches
from rayfin.config import RayfinConfig
from rayfin.errors import Forbidden, Unauthorized, UnknownDesk


@dataclass(frozen=True)
class Principal:
    desk: str | None       # None for admin
    admin: bool = False

    def may_act_for(self, desk: str) -> bool:
        return self.admin or self.desk == desk


class Auth:
    def __init__(self, config: RayfinConfig, deploy_key: str | None = None) -> None:
        self.admin_sha256 = config.admin.credential_sha256 if config.admin is not None else None
        self.desks = tuple((d.name, d.credential_sha256) for d in config.desks)
        self.known = [name for name, _ in self.desks]
        # Held by the process that started the controller (`rayfin up`): it may deploy and
        # release serving capacity, nothing else.
        self.deploy_key = deploy_key

    def authenticate(self, token: str | None, desk: str | None, action: str) -> Principal:
        if action == "deploy" and secret_matches(token, self.deploy_key):
            return Principal(desk, admin=True)
        if self.admin_sha256 is not None and token_matches(token, self.admin_sha256):
            self._known(desk)
            return Principal(desk, admin=True)
        self._known(desk)
        who = match_credential(token, self.desks)
        if who is None:
            raise Unauthorized(f"credential not valid (action: {action}); pass the desk's token", desk=desk,
                               action=action)
        if desk is not None and desk != who:
            raise Forbidden(f"credential of desk {who!r} may not {action} for desk {desk!r}", desk=desk,
                            action=action)
        return Principal(who)

    def require_operator(self, token: str | None, desk: str | None) -> Principal:
        principal = self.authenticate(token, desk, "deploy")
        if not principal.admin:
            raise Unauthorized("deploying serving capacity needs the admin credential or the deploy key of "
                               "`rayfin up`; desks call models over HTTP", desk=desk, action="deploy")
        return principal

    def _known(self, desk: str | None) -> None:
        if desk is not None and desk not in self.known:
            raise UnknownDesk(desk=desk, known=list(self.known))


__all__ = ["Auth", "Principal"]
