"""API-key authentication and role checks.

Keys travel as `Authorization: Bearer <key>`; the store keeps only their sha256. Roles:
- intake: classify, create petitions
- caseworker: read petitions, repeats, feedback
- admin: everything (models, reload, delete, metrics) -- an admin key passes every role check.
No key or an unknown/revoked key: 401. A valid key of the wrong role: 403.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from xinfang.serving.errors import ApiError

bearer = HTTPBearer(auto_error=False, description="An API key from `xinfang keys create`")


@dataclass(frozen=True)
class Principal:
    name: str
    role: str


def _authenticate(request: Request, creds: HTTPAuthorizationCredentials | None) -> Principal:
    if creds is None or not creds.credentials:
        raise ApiError(401, "unauthorized", "missing API key: send 'Authorization: Bearer <key>'",
                       headers={"WWW-Authenticate": "Bearer"})
    key = creds.credentials.strip()
    found = request.app.state.service.store.authenticate(key) if 0 < len(key) <= 200 else None
    if found is None:
        raise ApiError(401, "unauthorized", "invalid or revoked API key", headers={"WWW-Authenticate": "Bearer"})
    principal = Principal(*found)
    request.state.key_name = principal.name
    return principal


def require(*roles: str):
    """Dependency: a principal whose role is one of `roles` (admin always passes)."""
    allowed = set(roles) | {"admin"}

    def dependency(request: Request, creds: HTTPAuthorizationCredentials | None = Depends(bearer)) -> Principal:
        principal = _authenticate(request, creds)
        if principal.role not in allowed:
            raise ApiError(403, "forbidden", f"role {principal.role!r} may not do this; needs one of "
                                             f"{', '.join(sorted(allowed))}")
        return principal

    return dependency


ANY_ROLE = ("intake", "caseworker", "admin")
