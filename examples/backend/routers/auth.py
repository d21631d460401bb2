"""Authentication as FastAPI apps do it: a dependency that reads a bearer token.

Tokens are `user-<id>` (that user) or `admin` (anyone). A missing or malformed token is a 401
with `WWW-Authenticate: Bearer`; a valid token for another user is a 403.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Depends, HTTPException, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

bearer = HTTPBearer(auto_error=False)


@dataclass
class Caller:
    user_id: str
    admin: bool


def current_user(creds: HTTPAuthorizationCredentials | None = Depends(bearer)) -> Caller:
    if creds is None or creds.scheme.lower() != "bearer":
        raise HTTPException(
            status_code=status.HTTP_401_UNAUTHORIZED,
            detail="Not authenticated",
            headers={"WWW-Authenticate": "Bearer"},
        )
    token = creds.credentials
    if token == "admin":
        return Caller(user_id="admin", admin=True)
    if token.startswith("user-") and len(token) > 5:
        return Caller(user_id=token[5:], admin=False)
    raise HTTPException(
        status_code=status.HTTP_401_UNAUTHORIZED,
        detail="Invalid token",
        headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
    )


def same_user(user_id: str, caller: Caller = Depends(current_user)) -> Caller:
    """The path's user must be the caller (or the caller an admin)."""
    if not caller.admin and caller.user_id != user_id:
        raise HTTPException(status_code=status.HTTP_403_FORBIDDEN, detail="Not your account")
    return caller
