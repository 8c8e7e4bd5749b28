"""API tokens: created, hashed, checked, revoked; the first admin token written to a file on first start."""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Iterable
from datetime import timedelta
from pathlib import Path

from sqlalchemy import func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..models import SCOPES, ApiToken, utcnow
from ._common import NotFound, update_rows

TOKEN_PREFIX = "klq_"
INITIAL_TOKEN_NAME = "admin"


def hash_token(token: str) -> str:
    """SHA-256 hex of a token (see ApiToken for why a fast unsalted hash is right for random tokens)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def normalize_scopes(scopes: Iterable[str]) -> str:
    """Scopes imply the lower ones: admin > write > read."""
    wanted = set(scopes)
    unknown = wanted - set(SCOPES)
    if unknown:
        raise ValueError(f"unknown scopes {sorted(unknown)}; known: {list(SCOPES)}")
    if "admin" in wanted:
        wanted |= {"write"}
    if "write" in wanted:
        wanted |= {"read"}
    return " ".join(s for s in SCOPES if s in wanted)


def create_token(
    session: Session, name: str, scopes: Iterable[str] = ("read",), *, commit: bool = True
) -> tuple[ApiToken, str]:
    """A new token; returns the row and the plaintext (shown once, never stored)."""
    plaintext = TOKEN_PREFIX + secrets.token_urlsafe(32)  # 256 bits of randomness
    token = ApiToken(
        name=name,
        token_hash=hash_token(plaintext),
        prefix=plaintext[:12],
        scopes=normalize_scopes(scopes),
        created_at=utcnow(),
    )
    session.add(token)
    session.flush()
    if commit:
        session.commit()
    return token, plaintext


def authenticate(session: Session, plaintext: str) -> ApiToken | None:
    """The live token with this plaintext, or None."""
    if not plaintext or len(plaintext) > 200:
        return None
    return session.scalar(
        select(ApiToken).where(ApiToken.token_hash == hash_token(plaintext), ApiToken.revoked.is_(False))
    )


def touch_token(session: Session, token_id: int, *, min_interval: timedelta = timedelta(seconds=60)) -> None:
    """Record use, at most once per ``min_interval`` (no write per request)."""
    now = utcnow()
    unused_since = or_(ApiToken.last_used_at.is_(None), ApiToken.last_used_at < now - min_interval)
    update_rows(session, ApiToken, ApiToken.id == token_id, unused_since, values={"last_used_at": now}, commit=True)


def list_tokens(session: Session) -> list[ApiToken]:
    return list(session.scalars(select(ApiToken).order_by(ApiToken.id)))


def revoke_token(session: Session, token_id: int, *, commit: bool = True) -> ApiToken:
    token = session.get(ApiToken, token_id)
    if token is None:
        raise NotFound(f"token {token_id} not found")
    if not token.revoked:
        token.revoked = True
        token.revoked_at = utcnow()
    if commit:
        session.commit()
    return token


def write_token_file(path: Path, plaintext: str) -> None:
    """Write the token readable by its owner only (0600), replacing any previous file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, (plaintext + "\n").encode())
    finally:
        os.close(fd)


def ensure_initial_token(session: Session, token_file: Path | None = None) -> str | None:
    """On first start (no token at all), create an admin token, write it to ``token_file`` (default
    <data_dir>/api_token, mode 0600) and return the plaintext; otherwise return None."""
    if session.scalar(select(func.count(ApiToken.id))):
        return None
    try:
        _token, plaintext = create_token(session, INITIAL_TOKEN_NAME, ("read", "write", "admin"))
    except IntegrityError:  # another server process created it at the same moment
        session.rollback()
        return None
    if token_file is None:
        from ..settings import get_settings

        token_file = get_settings().resolved_token_file
    write_token_file(Path(token_file), plaintext)
    return plaintext
