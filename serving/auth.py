"""API-key authentication and role checks.

Keys travel as `Authorization: Bearer <key>`; the store keeps only their sha256. Roles:
- intake: classify, create petitions
- caseworker: read petitions, repeats, feedback
- admin: everything (reload, delete, server file paths in /v1/models) -- an admin key passes every role check.
Any key may read /v1/models (versions, labels; paths for admin only) and /metrics.
No key or an unknown/revoked key: 401. A valid key of the wrong role: 403.
After `limit` unknown/revoked keys from one client address within `window` seconds, every authenticated request
from that address gets 429 with Retry-After (the key is not even looked up) until the oldest failure ages out.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from xinfang.serving.errors import ApiError
from xinfang.serving.roles import ROLES

__all__ = ["ROLES", "AuthThrottle", "Principal", "require"]

bearer = HTTPBearer(auto_error=False, description="An API key from `xinfang keys create`")


@dataclass(frozen=True)
class Principal:
    name: str
    role: str


class AuthThrottle:
    """Failed authentications per client address in a sliding window (thread-safe, bounded memory)."""

    def __init__(self, limit: int = 30, window: float = 60.0, max_clients: int = 10_000) -> None:
        self.limit, self.window, self.max_clients = limit, window, max_clients
        self._fails: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def _recent(self, client: str, now: float) -> deque[float] | None:
        times = self._fails.get(client)
        while times and times[0] <= now - self.window:
            times.popleft()
        if times is not None and not times:
            del self._fails[client]
            return None
        return times

    def retry_after(self, client: str) -> int:
        """Seconds until `client` may try again (0: not throttled)."""
        now = time.monotonic()
        with self._lock:
            times = self._recent(client, now)
            if times is None or len(times) < self.limit:
                return 0
            return max(1, math.ceil(times[0] + self.window - now))

    def failed(self, client: str) -> None:
        now = time.monotonic()
        with self._lock:
            times = self._recent(client, now)
            if times is None:
                times = self._fails[client] = deque(maxlen=self.limit)
                while len(self._fails) > self.max_clients:
                    self._fails.popitem(last=False)
            self._fails.move_to_end(client)
            times.append(now)


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _authenticate(request: Request, creds: HTTPAuthorizationCredentials | None) -> Principal:
    if creds is None or not creds.credentials:
        raise ApiError(401, "unauthorized", "missing API key: send 'Authorization: Bearer <key>'",
                       headers={"WWW-Authenticate": "Bearer"})
    svc = request.app.state.service
    throttle: AuthThrottle = svc.auth_throttle
    wait = throttle.retry_after(_client(request))
    if wait:
        svc.metrics.auth_throttled.inc()
        raise ApiError(429, "too_many_requests", f"too many failed authentications from this address; retry in "
                       f"{wait} s", headers={"Retry-After": str(wait)})
    key = creds.credentials.strip()
    found = svc.store.authenticate(key) if 0 < len(key) <= 200 else None
    if found is None:
        throttle.failed(_client(request))
        svc.metrics.auth_failures.inc()
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


