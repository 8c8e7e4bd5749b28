"""API tokens: create (shown once), list, revoke. Managing tokens needs the admin scope."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path
from sqlalchemy.exc import IntegrityError

from .. import store
from ..deps import CanAdmin, ReadSession, WriteSession, require_read
from ..models import ApiToken
from ..schemas import INT32_MAX, TokenCreate, TokenCreated, TokenOut

router = APIRouter(prefix="/tokens", tags=["tokens"])


def token_out(t: ApiToken) -> TokenOut:
    return TokenOut(
        id=t.id,
        name=t.name,
        prefix=t.prefix,
        scopes=t.scope_list,
        created_at=t.created_at,
        last_used_at=t.last_used_at,
        revoked=t.revoked,
    )


@router.post(
    "", status_code=201, response_model=TokenCreated, dependencies=[CanAdmin], summary="Create a token"
)
def create_token(body: TokenCreate, session: WriteSession) -> TokenCreated:
    try:
        token, plaintext = store.create_token(session, body.name, body.scopes)
    except IntegrityError as err:
        session.rollback()
        raise HTTPException(status_code=409, detail=f"a token named {body.name!r} already exists") from err
    return TokenCreated(**token_out(token).model_dump(), token=plaintext)


@router.get(
    "", response_model=list[TokenOut], dependencies=[CanAdmin], summary="List tokens (never their values)"
)
def list_tokens(session: ReadSession) -> list[TokenOut]:
    return [token_out(t) for t in store.list_tokens(session)]


@router.get("/me", response_model=TokenOut, summary="The token making this request")
def whoami(token: Annotated[ApiToken | None, Depends(require_read)]) -> TokenOut:
    if token is None:
        raise HTTPException(status_code=401, detail="no token given", headers={"WWW-Authenticate": "Bearer"})
    return token_out(token)


@router.delete("/{token_id}", response_model=TokenOut, dependencies=[CanAdmin], summary="Revoke a token")
def revoke_token(token_id: Annotated[int, Path(ge=1, le=INT32_MAX)], session: WriteSession) -> TokenOut:
    return token_out(store.revoke_token(session, token_id))
