"""Accounts and their API tokens in the database."""

from __future__ import annotations

import base64
import binascii
from datetime import datetime, timedelta

from sqlalchemy import insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from imagegen_billing import tokens
from imagegen_billing.db import Database
from imagegen_billing.domain import (
    Account,
    AccountNotFoundError,
    AlreadyExistsError,
    ApiToken,
    EntryKind,
    InvalidArgumentError,
    TokenNotFoundError,
    UnauthenticatedError,
    clip,
    normalise_email,
    shown,
)
from imagegen_billing.models import accounts, api_tokens
from imagegen_billing.store import ACCOUNT_COLUMNS, TOKEN_COLUMNS, append_entry, now, to_account, to_token
from imagegen_common.ids import random_id

INVALID_TOKEN = "invalid or revoked API token"
#: A token's last-used time is written at most this often, so that Authenticate stays a read.
LAST_USED_RESOLUTION = timedelta(minutes=1)
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500


async def insert_account(
    conn: AsyncConnection, account_id: str, email: str, *, credits: int, at: datetime, note: str
) -> None:
    """Writes a new account (email normalised by the caller) and the ledger grant of its starting
    credits. An email that exists already raises IntegrityError (the unique index decides a race)."""
    await conn.execute(
        insert(accounts).values(
            id=account_id, email=email, credits=credits, reserved_credits=0, create_time=at
        )
    )
    if credits:
        await append_entry(
            conn,
            account_id=account_id,
            kind=EntryKind.GRANT,
            amount=credits,
            balance_after=credits,
            at=at,
            note=note,
        )


class Accounts:
    """Accounts and API tokens."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._touching: set[str] = set()

    async def create(self, email: str, credits: int, token_label: str = "") -> tuple[Account, ApiToken, str]:
        """A new account with ``credits`` granted and its first token; returns the token's secret too."""
        email = normalise_email(email)
        if credits < 0:
            raise InvalidArgumentError(
                f"initial credits must not be negative, not {credits}", field="credits"
            )
        at = now()
        account_id = random_id("acc")
        try:
            async with self.db.write() as conn:
                exists = await conn.scalar(select(accounts.c.id).where(accounts.c.email == email))
                if exists:
                    raise AlreadyExistsError(f"an account with email {email} already exists")
                await insert_account(conn, account_id, email, credits=credits, at=at, note="initial credits")
                token, secret = await _insert_token(conn, account_id, token_label)
        except IntegrityError as exc:  # another call created the same email a moment ago
            raise AlreadyExistsError(f"an account with email {email} already exists") from exc
        account = Account(id=account_id, email=email, credits=credits, reserved_credits=0, create_time=at)
        return account, token, secret

    async def get(self, account_id: str) -> Account:
        """The account of an id; NotFoundError when there is none."""
        async with self.db.read() as conn:
            return await _account_by_id(conn, account_id)

    async def list_page(self, page_size: int = 0, page_token: str = "") -> tuple[list[Account], str]:
        """Accounts ordered by email, and the token of the next page ("" after the last)."""
        size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        query = select(*ACCOUNT_COLUMNS).order_by(accounts.c.email).limit(size + 1)
        if page_token:
            query = query.where(accounts.c.email > _decode_page_token(page_token))
        async with self.db.read() as conn:
            rows = (await conn.execute(query)).all()
        page = [to_account(row) for row in rows[:size]]
        next_token = _encode_page_token(page[-1].email) if len(rows) > size else ""
        return page, next_token

    async def issue_token(self, alias: str, label: str = "") -> tuple[ApiToken, str]:
        """A new token of the account; returns its secret, which is stored nowhere."""
        async with self.db.write() as conn:
            account = await account_by_alias(conn, alias)
            return await _insert_token(conn, account.id, label)

    async def tokens_of(self, account_id: str) -> list[ApiToken]:
        async with self.db.read() as conn:
            return await _tokens_of(conn, account_id)

    async def find_with_tokens(self, alias: str) -> tuple[Account, list[ApiToken]]:
        async with self.db.read() as conn:
            account = await account_by_alias(conn, alias)
            return account, await _tokens_of(conn, account.id)

    async def revoke_token(self, token_id: str) -> ApiToken:
        """Revokes a token at once; revoking a revoked token changes nothing."""
        async with self.db.write() as conn:
            await conn.execute(
                update(api_tokens)
                .where(api_tokens.c.id == token_id, api_tokens.c.revoke_time.is_(None))
                .values(revoke_time=now())
            )
            row = (await conn.execute(select(*TOKEN_COLUMNS).where(api_tokens.c.id == token_id))).first()
        if row is None:
            raise TokenNotFoundError(f"no token {shown(token_id)!r}")
        return to_token(row)

    async def authenticate(self, token: str) -> tuple[Account, str]:
        """The account of a token and the token's id; UnauthenticatedError for unknown or revoked ones."""
        if not tokens.plausible(token):
            raise UnauthenticatedError(INVALID_TOKEN)
        token_hash = tokens.hash_token(token)
        query = (
            select(
                *ACCOUNT_COLUMNS,
                api_tokens.c.id.label("token_id"),
                api_tokens.c.token_hash,
                api_tokens.c.last_used_time,
                api_tokens.c.revoke_time,
                accounts.c.disable_time,  # portal: a disabled account's tokens stop working
            )
            .join(api_tokens, api_tokens.c.account_id == accounts.c.id)
            .where(api_tokens.c.token_hash == token_hash)
        )
        async with self.db.read() as conn:
            row = (await conn.execute(query)).first()
        if (
            row is None
            or row.revoke_time is not None
            or row.disable_time is not None  # portal: a disabled account's tokens stop working
            or not tokens.hashes_match(row.token_hash, token)
        ):
            raise UnauthenticatedError(INVALID_TOKEN)
        at = now()
        if row.last_used_time is None or at - row.last_used_time >= LAST_USED_RESOLUTION:
            await self._touch(row.token_id, at)
        return to_account(row), row.token_id

    async def _touch(self, token_id: str, at: datetime) -> None:
        # A burst of calls with one fresh token would otherwise queue one write each for one timestamp.
        if token_id in self._touching:
            return
        self._touching.add(token_id)
        try:
            await self._touch_once(token_id, at)
        finally:
            self._touching.discard(token_id)

    async def _touch_once(self, token_id: str, at: datetime) -> None:
        cutoff = now() - LAST_USED_RESOLUTION
        async with self.db.write() as conn:
            await conn.execute(
                update(api_tokens)
                .where(
                    api_tokens.c.id == token_id,
                    or_(api_tokens.c.last_used_time.is_(None), api_tokens.c.last_used_time <= cutoff),
                )
                .values(last_used_time=at)
            )


async def _account_by_id(conn: AsyncConnection, account_id: str) -> Account:
    row = (await conn.execute(select(*ACCOUNT_COLUMNS).where(accounts.c.id == account_id))).first()
    if row is None:
        raise AccountNotFoundError(f"no account {shown(account_id)!r}")
    return to_account(row)


async def account_by_alias(conn: AsyncConnection, alias: str) -> Account:
    """The account of an id or an email, in the caller's transaction."""
    alias = alias.strip()
    if not alias:
        raise InvalidArgumentError("an account id or email is required", field="account")
    if "@" not in alias:
        return await _account_by_id(conn, alias)
    email = alias.lower()
    row = (await conn.execute(select(*ACCOUNT_COLUMNS).where(accounts.c.email == email))).first()
    if row is None:
        raise AccountNotFoundError(f"no account with email {shown(email)}")
    return to_account(row)


async def _tokens_of(conn: AsyncConnection, account_id: str) -> list[ApiToken]:
    query = (
        select(*TOKEN_COLUMNS)
        .where(api_tokens.c.account_id == account_id)
        .order_by(api_tokens.c.create_time, api_tokens.c.id)
    )
    return [to_token(row) for row in (await conn.execute(query)).all()]


async def _insert_token(conn: AsyncConnection, account_id: str, label: str) -> tuple[ApiToken, str]:
    secret = tokens.generate_token()
    token = ApiToken(
        id=random_id("tok"),
        account_id=account_id,
        label=clip(label) or "default",
        prefix=tokens.display_prefix(secret),
        create_time=now(),
        last_used_time=None,
        revoke_time=None,
    )
    await conn.execute(
        insert(api_tokens).values(
            id=token.id,
            account_id=account_id,
            token_hash=tokens.hash_token(secret),
            prefix=token.prefix,
            label=token.label,
            create_time=token.create_time,
            last_used_time=None,
            revoke_time=None,
        )
    )
    return token, secret


def _encode_page_token(email: str) -> str:
    return base64.urlsafe_b64encode(email.encode()).decode()


def _decode_page_token(token: str) -> str:
    try:
        return base64.urlsafe_b64decode(token.encode()).decode()
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise InvalidArgumentError("invalid page_token", field="page_token") from exc
