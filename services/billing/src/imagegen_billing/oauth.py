"""OAuth 2.1 authorization server data (issue 12): clients, grants, codes and tokens.

Every secret is random, shown once and stored as its SHA-256 (like API tokens). Codes are used once by
a conditional UPDATE; refresh tokens rotate the same way, and a used one presented again revokes its
whole grant (RFC 9700 §4.14.2: a stolen refresh token is worth nothing once either party used it).
Revoking a grant ends all its tokens at once: every token check joins the grant.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from imagegen_billing import people
from imagegen_billing.db import Database
from imagegen_billing.domain import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
)
from imagegen_billing.models import accounts, oauth_clients, oauth_codes, oauth_grants, oauth_tokens
from imagegen_billing.store import now
from imagegen_common.ids import random_id

CODE_PREFIX = "igc_"
ACCESS_PREFIX = "iga_"
REFRESH_PREFIX = "igr_"
CLIENT_SECRET_PREFIX = "igcs_"
CLIENT_ID_PREFIX = "igcl"
SECRET_BYTES = 32
MAX_SECRET_CHARS = 256
MAX_CLIENT_ID_CHARS = 2048
CODE_LIFE = timedelta(minutes=5)
ACCESS_LIFE = timedelta(hours=1)
REFRESH_LIFE = timedelta(days=30)
#: Expired codes and tokens are deleted this long after they stopped working; each authorization purges.
PURGE_AFTER = timedelta(days=1)
KNOWN_SCOPES = ("images:generate", "account:read")
#: The account id of a live portal session (UnauthenticatedError otherwise).
SessionLookup = Callable[[str], Awaitable[str]]
INVALID_GRANT = "the authorization code or refresh token is invalid, used, expired or revoked"


class ClientKind(StrEnum):
    DYNAMIC = "dynamic"
    METADATA_DOCUMENT = "document"
    OPERATOR = "operator"


class TokenKind(StrEnum):
    ACCESS = "access"
    REFRESH = "refresh"


class InvalidGrantError(FailedPreconditionError):
    """A code or refresh token that is unknown, used, expired, revoked, or presented wrongly."""


@dataclass(frozen=True, slots=True)
class Client:
    client_id: str
    kind: ClientKind
    client_name: str
    metadata_json: str
    secret_hash: str
    create_time: datetime
    update_time: datetime


@dataclass(frozen=True, slots=True)
class CodeInfo:
    client_id: str
    redirect_uri: str
    code_challenge: str
    resource: str
    scopes: tuple[str, ...]
    expire_time: datetime
    account_id: str


@dataclass(frozen=True, slots=True)
class TokenSet:
    access_token: str
    refresh_token: str
    access_expire_time: datetime
    scopes: tuple[str, ...]
    resource: str


@dataclass(frozen=True, slots=True)
class TokenInfo:
    kind: TokenKind
    account_id: str
    email: str
    client_id: str
    scopes: tuple[str, ...]
    resource: str
    expire_time: datetime
    grant_id: str


@dataclass(frozen=True, slots=True)
class Grant:
    id: str
    client_id: str
    client_name: str
    scopes: tuple[str, ...]
    create_time: datetime
    last_used_time: datetime | None


def scope_text(scopes: tuple[str, ...] | list[str]) -> str:
    """A scope set's one stored form: sorted, unique, space-separated."""
    return " ".join(sorted(set(scopes)))


def scope_set(text: str) -> tuple[str, ...]:
    return tuple(text.split()) if text else ()


def pkce_s256(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")


def _secret(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(SECRET_BYTES)


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _plausible(secret: str, prefix: str) -> bool:
    return secret.startswith(prefix) and len(secret) <= MAX_SECRET_CHARS


def _check_scopes(scopes: tuple[str, ...]) -> None:
    unknown = [scope for scope in scopes if scope not in KNOWN_SCOPES]
    if unknown:
        raise InvalidArgumentError(f"unknown scope: {unknown[0]}", "scopes")


def _client_of(row: object) -> Client:
    return Client(
        client_id=row.id,  # type: ignore[attr-defined]
        kind=ClientKind(row.kind),  # type: ignore[attr-defined]
        client_name=row.client_name,  # type: ignore[attr-defined]
        metadata_json=row.metadata_json,  # type: ignore[attr-defined]
        secret_hash=row.secret_hash or "",  # type: ignore[attr-defined]
        create_time=row.create_time,  # type: ignore[attr-defined]
        update_time=row.update_time,  # type: ignore[attr-defined]
    )


class OAuthStore:
    """The authorization server's state, on billing's database."""

    def __init__(self, db: Database, portal_session: SessionLookup) -> None:
        self.db = db
        self._session = portal_session

    # Clients

    async def register_client(
        self,
        kind: ClientKind,
        client_id: str,
        client_name: str,
        metadata_json: str,
        *,
        confidential: bool = False,
        secret_hash: str = "",
    ) -> tuple[Client, str]:
        """Stores a client; the answer's second part is a secret billing made (else empty)."""
        replace = False
        if kind is ClientKind.METADATA_DOCUMENT:
            if not client_id.startswith(("https://", "http://")) or len(client_id) > MAX_CLIENT_ID_CHARS:
                raise InvalidArgumentError("a metadata document's client_id is its URL", "client_id")
            confidential, secret_hash, replace = False, "", True
        elif kind is ClientKind.DYNAMIC and client_id:
            if len(client_id) > MAX_SECRET_CHARS or client_id.startswith(("https://", "http://")):
                raise InvalidArgumentError("a client_id of a registered client is not a URL", "client_id")
        else:
            client_id = random_id(CLIENT_ID_PREFIX)
        secret = _secret(CLIENT_SECRET_PREFIX) if confidential and not secret_hash else ""
        if len(secret_hash) not in (0, 64):
            raise InvalidArgumentError("client_secret_sha256 is a hex SHA-256", "client_secret_sha256")
        at = now()
        values = {
            "kind": kind.value,
            "client_name": client_name.strip()[:255] or "Unnamed app",
            "metadata_json": metadata_json,
            "secret_hash": (_hash(secret) if secret else secret_hash) or None,
            "update_time": at,
        }
        async with self.db.write() as conn:
            existing = (
                await conn.execute(select(oauth_clients.c.id).where(oauth_clients.c.id == client_id))
            ).first()
            if existing is None:
                await conn.execute(insert(oauth_clients).values(id=client_id, create_time=at, **values))
            elif replace:
                await conn.execute(
                    update(oauth_clients).where(oauth_clients.c.id == client_id).values(**values)
                )
            else:
                raise AlreadyExistsError("that client_id is taken")
            row = (await conn.execute(select(oauth_clients).where(oauth_clients.c.id == client_id))).one()
        return _client_of(row), secret

    async def client(self, client_id: str) -> Client:
        async with self.db.read() as conn:
            row = (await conn.execute(select(oauth_clients).where(oauth_clients.c.id == client_id))).first()
        if row is None:
            raise NotFoundError("no such client")
        return _client_of(row)

    # Consent and codes

    async def _live_grant(
        self, conn: AsyncConnection, account_id: str, client_id: str, scopes: str
    ) -> str | None:
        row = (
            await conn.execute(
                select(oauth_grants.c.id).where(
                    oauth_grants.c.account_id == account_id,
                    oauth_grants.c.client_id == client_id,
                    oauth_grants.c.scopes == scopes,
                    oauth_grants.c.revoke_time.is_(None),
                )
            )
        ).first()
        return row.id if row is not None else None

    async def consent(self, session_token: str, client_id: str, scopes: tuple[str, ...]) -> bool:
        """Whether the session's account approved this client for exactly these scopes before."""
        account_id = await self._session(session_token)
        async with self.db.read() as conn:
            return await self._live_grant(conn, account_id, client_id, scope_text(scopes)) is not None

    async def create_code(
        self,
        session_token: str,
        *,
        client_id: str,
        redirect_uri: str,
        code_challenge: str,
        resource: str,
        scopes: tuple[str, ...],
    ) -> tuple[str, datetime]:
        """Records the approval (a grant, reused when it exists) and makes a one-time code."""
        _check_scopes(scopes)
        if not code_challenge or len(code_challenge) > 128:
            raise InvalidArgumentError("a PKCE S256 code_challenge is required", "code_challenge")
        if not resource:
            raise InvalidArgumentError("the resource is required", "resource")
        account_id = await self._session(session_token)
        await self.client(client_id)
        text = scope_text(scopes)
        code = _secret(CODE_PREFIX)
        at = now()
        expire = at + CODE_LIFE
        async with self.db.write() as conn:
            await conn.execute(delete(oauth_codes).where(oauth_codes.c.expire_time < at - PURGE_AFTER))
            await conn.execute(delete(oauth_tokens).where(oauth_tokens.c.expire_time < at - PURGE_AFTER))
            grant_id = await self._live_grant(conn, account_id, client_id, text)
            if grant_id is None:
                grant_id = random_id("grant")
                await conn.execute(
                    insert(oauth_grants).values(
                        id=grant_id, account_id=account_id, client_id=client_id, scopes=text, create_time=at
                    )
                )
            await conn.execute(
                insert(oauth_codes).values(
                    id=random_id("code"),
                    code_hash=_hash(code),
                    grant_id=grant_id,
                    redirect_uri=redirect_uri,
                    code_challenge=code_challenge,
                    resource=resource,
                    scopes=text,
                    create_time=at,
                    expire_time=expire,
                )
            )
        return code, expire

    def _code_query(self, code: str):  # type: ignore[no-untyped-def]
        return (
            select(
                oauth_codes,
                oauth_grants.c.client_id,
                oauth_grants.c.account_id,
                oauth_grants.c.revoke_time.label("grant_revoke_time"),
            )
            .join(oauth_grants, oauth_grants.c.id == oauth_codes.c.grant_id)
            .where(oauth_codes.c.code_hash == _hash(code))
        )

    async def code(self, code: str) -> CodeInfo:
        """A live, unused code (NotFoundError otherwise)."""
        if not _plausible(code, CODE_PREFIX):
            raise NotFoundError("no such code")
        async with self.db.read() as conn:
            row = (await conn.execute(self._code_query(code))).first()
        if (
            row is None
            or row.use_time is not None
            or row.grant_revoke_time is not None
            or now() >= row.expire_time
        ):
            raise NotFoundError("no such code")
        return CodeInfo(
            client_id=row.client_id,
            redirect_uri=row.redirect_uri,
            code_challenge=row.code_challenge,
            resource=row.resource,
            scopes=scope_set(row.scopes),
            expire_time=row.expire_time,
            account_id=row.account_id,
        )

    async def exchange_code(
        self, code: str, client_id: str, redirect_uri: str, code_verifier: str, resource: str
    ) -> TokenSet:
        if not _plausible(code, CODE_PREFIX):
            raise InvalidGrantError(INVALID_GRANT)
        async with self.db.write() as conn:
            tokens = await self._exchange_code(
                conn,
                code=code,
                client_id=client_id,
                redirect_uri=redirect_uri,
                code_verifier=code_verifier,
                resource=resource,
            )
        if tokens is None:  # reused: the revocation is committed, the request refused
            raise InvalidGrantError(INVALID_GRANT)
        return tokens

    async def _exchange_code(
        self,
        conn: AsyncConnection,
        *,
        code: str,
        client_id: str,
        redirect_uri: str,
        code_verifier: str,
        resource: str,
    ) -> TokenSet | None:
        at = now()
        row = (await conn.execute(self._code_query(code))).first()
        if row is None or row.grant_revoke_time is not None or row.client_id != client_id:
            raise InvalidGrantError(INVALID_GRANT)
        if row.use_time is not None:
            # A code presented twice was probably stolen: whatever it gave is taken back.
            await _revoke_grant(conn, row.grant_id, at)
            return None
        if at >= row.expire_time:
            raise InvalidGrantError(INVALID_GRANT)
        if row.redirect_uri != redirect_uri:
            raise InvalidGrantError("redirect_uri differs from the authorization request's")
        if not hmac.compare_digest(pkce_s256(code_verifier).encode(), row.code_challenge.encode()):
            raise InvalidGrantError("incorrect code_verifier")
        if resource and resource != row.resource:
            raise InvalidGrantError("resource differs from the authorization request's")
        used = await conn.execute(
            update(oauth_codes)
            .where(oauth_codes.c.id == row.id, oauth_codes.c.use_time.is_(None))
            .values(use_time=at)
        )
        if used.rowcount != 1:
            raise InvalidGrantError(INVALID_GRANT)
        return await _issue(conn, row.grant_id, scope_set(row.scopes), row.resource, at)

    # Tokens

    def _token_query(self, token: str):  # type: ignore[no-untyped-def]
        return (
            select(
                oauth_tokens,
                oauth_grants.c.client_id,
                oauth_grants.c.account_id,
                oauth_grants.c.revoke_time.label("grant_revoke_time"),
                accounts.c.email,
                accounts.c.disable_time,
            )
            .join(oauth_grants, oauth_grants.c.id == oauth_tokens.c.grant_id)
            .join(accounts, accounts.c.id == oauth_grants.c.account_id)
            .where(oauth_tokens.c.token_hash == _hash(token))
        )

    async def _token(self, token: str, kind: TokenKind) -> TokenInfo:
        prefix = ACCESS_PREFIX if kind is TokenKind.ACCESS else REFRESH_PREFIX
        if not _plausible(token, prefix):
            raise NotFoundError("no such token")
        async with self.db.read() as conn:
            row = (await conn.execute(self._token_query(token))).first()
        if (
            row is None
            or row.kind != kind.value
            or row.revoke_time is not None
            or row.grant_revoke_time is not None
            or row.disable_time is not None
            or (kind is TokenKind.REFRESH and row.use_time is not None)
            or now() >= row.expire_time
        ):
            raise NotFoundError("no such token")
        return TokenInfo(
            kind=kind,
            account_id=row.account_id,
            email=row.email,
            client_id=row.client_id,
            scopes=scope_set(row.scopes),
            resource=row.resource,
            expire_time=row.expire_time,
            grant_id=row.grant_id,
        )

    async def verify_access(self, token: str) -> TokenInfo:
        """Whom a live access token acts for; marks its grant used (about once a minute at most)."""
        info = await self._token(token, TokenKind.ACCESS)
        at = now()
        async with self.db.write() as conn:
            await conn.execute(
                update(oauth_grants)
                .where(
                    oauth_grants.c.id == info.grant_id,
                    (oauth_grants.c.last_used_time.is_(None))
                    | (oauth_grants.c.last_used_time < at - people.TOUCH_RESOLUTION),
                )
                .values(last_used_time=at)
            )
        return info

    async def refresh_info(self, token: str) -> TokenInfo:
        return await self._token(token, TokenKind.REFRESH)

    async def exchange_refresh(
        self, token: str, client_id: str, scopes: tuple[str, ...], resource: str
    ) -> TokenSet:
        if not _plausible(token, REFRESH_PREFIX):
            raise InvalidGrantError(INVALID_GRANT)
        async with self.db.write() as conn:
            tokens = await self._exchange_refresh(conn, token, client_id, scopes, resource)
        if tokens is None:  # reused: the revocation is committed, the request refused
            raise InvalidGrantError(INVALID_GRANT)
        return tokens

    async def _exchange_refresh(
        self, conn: AsyncConnection, token: str, client_id: str, scopes: tuple[str, ...], resource: str
    ) -> TokenSet | None:
        at = now()
        row = (await conn.execute(self._token_query(token))).first()
        if (
            row is None
            or row.kind != TokenKind.REFRESH.value
            or row.client_id != client_id
            or row.grant_revoke_time is not None
            or row.revoke_time is not None
            or row.disable_time is not None
        ):
            raise InvalidGrantError(INVALID_GRANT)
        if row.use_time is not None:
            await _revoke_grant(conn, row.grant_id, at)
            return None
        if at >= row.expire_time:
            raise InvalidGrantError(INVALID_GRANT)
        granted = scope_set(row.scopes)
        wanted = tuple(sorted(set(scopes))) if scopes else granted
        if not set(wanted) <= set(granted):
            raise InvalidArgumentError("a refresh may not add scopes", "scopes")
        if resource and resource != row.resource:
            raise InvalidGrantError("resource differs from the grant's")
        used = await conn.execute(
            update(oauth_tokens)
            .where(oauth_tokens.c.id == row.id, oauth_tokens.c.use_time.is_(None))
            .values(use_time=at)
        )
        if used.rowcount != 1:
            raise InvalidGrantError(INVALID_GRANT)
        await conn.execute(
            update(oauth_grants).where(oauth_grants.c.id == row.grant_id).values(last_used_time=at)
        )
        return await _issue(conn, row.grant_id, wanted, row.resource, at)

    async def revoke_token(self, token: str, client_id: str) -> None:
        """RFC 7009: revokes the grant of a token of this client; anything else changes nothing."""
        if not (_plausible(token, ACCESS_PREFIX) or _plausible(token, REFRESH_PREFIX)):
            return
        at = now()
        async with self.db.write() as conn:
            row = (await conn.execute(self._token_query(token))).first()
            if row is None or row.client_id != client_id:
                return
            await _revoke_grant(conn, row.grant_id, at)

    # Connected apps

    async def grants(self, session_token: str) -> list[Grant]:
        account_id = await self._session(session_token)
        query = (
            select(oauth_grants, oauth_clients.c.client_name)
            .join(oauth_clients, oauth_clients.c.id == oauth_grants.c.client_id)
            .where(oauth_grants.c.account_id == account_id, oauth_grants.c.revoke_time.is_(None))
            .order_by(oauth_grants.c.create_time.desc())
        )
        async with self.db.read() as conn:
            rows = (await conn.execute(query)).all()
        return [
            Grant(
                id=row.id,
                client_id=row.client_id,
                client_name=row.client_name,
                scopes=scope_set(row.scopes),
                create_time=row.create_time,
                last_used_time=row.last_used_time,
            )
            for row in rows
        ]

    async def revoke_own_grant(self, session_token: str, grant_id: str) -> None:
        account_id = await self._session(session_token)
        async with self.db.write() as conn:
            row = (
                await conn.execute(
                    select(oauth_grants.c.id).where(
                        oauth_grants.c.id == grant_id,
                        oauth_grants.c.account_id == account_id,
                        oauth_grants.c.revoke_time.is_(None),
                    )
                )
            ).first()
            if row is None:
                raise NotFoundError("no such connected app")
            await _revoke_grant(conn, grant_id, now())


async def _revoke_grant(conn: AsyncConnection, grant_id: str, at: datetime) -> None:
    await conn.execute(
        update(oauth_grants)
        .where(oauth_grants.c.id == grant_id, oauth_grants.c.revoke_time.is_(None))
        .values(revoke_time=at)
    )
    await conn.execute(
        update(oauth_tokens)
        .where(oauth_tokens.c.grant_id == grant_id, oauth_tokens.c.revoke_time.is_(None))
        .values(revoke_time=at)
    )


async def _issue(
    conn: AsyncConnection, grant_id: str, scopes: tuple[str, ...], resource: str, at: datetime
) -> TokenSet:
    access, refresh = _secret(ACCESS_PREFIX), _secret(REFRESH_PREFIX)
    text = scope_text(scopes)
    for secret, kind, life in (
        (access, TokenKind.ACCESS, ACCESS_LIFE),
        (refresh, TokenKind.REFRESH, REFRESH_LIFE),
    ):
        await conn.execute(
            insert(oauth_tokens).values(
                id=random_id("otok"),
                token_hash=_hash(secret),
                kind=kind.value,
                grant_id=grant_id,
                scopes=text,
                resource=resource,
                create_time=at,
                expire_time=at + life,
            )
        )
    return TokenSet(access, refresh, at + ACCESS_LIFE, scope_set(text), resource)
