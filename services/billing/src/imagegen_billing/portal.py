"""The portal's data: sign-in links, sessions, OpenID Connect identities, roles and the disabled flag.

Every check that a session grants is made here, in one query: the session exists, has not ended, is
within its idle and absolute expiry, and its account is not disabled. Gateways keep nothing, so ending
a session or disabling an account takes effect on every replica at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from imagegen_billing import people
from imagegen_billing.accounts import account_by_alias, insert_account
from imagegen_billing.db import Database
from imagegen_billing.domain import (
    Account,
    ApiToken,
    InvalidArgumentError,
    NotFoundError,
    UnauthenticatedError,
    normalise_email,
)
from imagegen_billing.models import (
    accounts,
    api_tokens,
    login_links,
    sessions,
    sign_in_attempts,
    sign_in_identities,
)
from imagegen_billing.people import (
    PermissionDeniedError,
    PortalAccount,
    RateLimitedError,
    Role,
    Session,
    SessionLifetimes,
    SignInMethod,
    SignupRules,
)
from imagegen_billing.store import (
    ACCOUNT_COLUMNS,
    TOKEN_COLUMNS,
    AnyRow,
    now,
    to_account,
    to_token,
)
from imagegen_common.ids import random_id
from imagegen_common.redirects import safe_next_path

INVALID_SESSION = "not signed in, or the session has ended"
INVALID_LINK = "this sign-in link is invalid, used or expired"
PORTAL_ACCOUNT_COLUMNS = (*ACCOUNT_COLUMNS, accounts.c.role, accounts.c.disable_time)
MAX_SEARCH_RESULTS = 100
#: Used, expired and ended links and sessions are deleted this long after they stopped working (kept a
#: little while for support questions); each sign-in purges them, so the tables stay small.
PURGE_AFTER = timedelta(days=1)


@dataclass(frozen=True, slots=True)
class LoginLink:
    secret: str
    email: str
    expire_time: datetime


def to_portal_account(row: AnyRow) -> PortalAccount:
    return PortalAccount(
        account=to_account(row), role=people.role_of(row.role), disabled=row.disable_time is not None
    )


class Portal:
    """People's sign-in and sessions, and what a session may see of its account."""

    def __init__(
        self,
        db: Database,
        *,
        signup: SignupRules,
        lifetimes: SessionLifetimes,
        link_life: timedelta,
        rate_window: timedelta,
        rate_per_email: int,
        rate_per_address: int,
    ) -> None:
        self.db = db
        self.signup = signup
        self.lifetimes = lifetimes
        self.link_life = link_life
        self.rate_window = rate_window
        self.rate_per_email = rate_per_email
        self.rate_per_address = rate_per_address

    # Sign-in links

    async def start_email_sign_in(self, email: str, client_address: str, next_path: str) -> LoginLink | None:
        """A one-time link when this email may sign in, else None; counts the request against the limits
        whether or not a link is made (so that the limits say nothing about accounts)."""
        email = normalise_email(email)
        client_address = client_address.strip()[:64]
        at = now()
        since = at - self.rate_window
        async with self.db.write() as conn:
            await conn.execute(delete(sign_in_attempts).where(sign_in_attempts.c.create_time < since))
            by_email = await conn.scalar(
                select(func.count()).where(
                    sign_in_attempts.c.email == email, sign_in_attempts.c.create_time >= since
                )
            )
            by_address = (
                await conn.scalar(
                    select(func.count()).where(
                        sign_in_attempts.c.client_address == client_address,
                        sign_in_attempts.c.create_time >= since,
                    )
                )
                if client_address
                else 0
            )
            if (by_email or 0) >= self.rate_per_email or (by_address or 0) >= self.rate_per_address:
                raise RateLimitedError("too many sign-in requests; try again later")
            await conn.execute(
                insert(sign_in_attempts).values(email=email, client_address=client_address, create_time=at)
            )
            row = (
                await conn.execute(
                    select(accounts.c.id, accounts.c.disable_time).where(accounts.c.email == email)
                )
            ).first()
            if row is None:
                if not self.signup.allows(email):
                    return None
                return await self._insert_link(conn, email, None, next_path, at)
            if row.disable_time is not None:
                return None
            return await self._insert_link(conn, email, row.id, next_path, at)

    async def create_login_link(self, alias: str, next_path: str = "") -> tuple[LoginLink, PortalAccount]:
        """A one-time link for an existing account (operators), whatever the sign-up policy."""
        at = now()
        async with self.db.write() as conn:
            account = await _portal_account(conn, alias)
            link = await self._insert_link(conn, account.account.email, account.account.id, next_path, at)
        return link, account

    async def _insert_link(
        self, conn: AsyncConnection, email: str, account_id: str | None, next_path: str, at: datetime
    ) -> LoginLink:
        await conn.execute(delete(login_links).where(login_links.c.expire_time < at - PURGE_AFTER))
        secret = people.new_secret(people.LINK_PREFIX)
        expire = at + self.link_life
        await conn.execute(
            insert(login_links).values(
                id=random_id("lnk"),
                token_hash=people.hash_secret(secret),
                email=email,
                account_id=account_id,
                next_path=safe_next_path(next_path),
                create_time=at,
                expire_time=expire,
                use_time=None,
            )
        )
        return LoginLink(secret=secret, email=email, expire_time=expire)

    async def complete_email_sign_in(self, link_secret: str) -> tuple[str, Session, str]:
        """Uses a link once and opens a session: its secret, the session and the link's next path."""
        if not people.plausible(link_secret, people.LINK_PREFIX):
            raise UnauthenticatedError(INVALID_LINK)
        at = now()
        token_hash = people.hash_secret(link_secret)
        async with self.db.write() as conn:
            used = await conn.execute(
                update(login_links)
                .where(
                    login_links.c.token_hash == token_hash,
                    login_links.c.use_time.is_(None),
                    login_links.c.expire_time > at,
                )
                .values(use_time=at)
            )
            if used.rowcount != 1:
                raise UnauthenticatedError(INVALID_LINK)
            link = (
                await conn.execute(select(login_links).where(login_links.c.token_hash == token_hash))
            ).one()
            account_id = link.account_id or await self._account_for_email(conn, link.email, at)
            secret, session = await self._open_session(conn, account_id, SignInMethod.EMAIL, at)
        return secret, session, link.next_path

    async def complete_oidc_sign_in(
        self, issuer: str, subject: str, email: str, email_verified: bool
    ) -> tuple[str, Session]:
        """Opens a session for an identity a provider vouched for. A known (issuer, subject) signs in to
        its account; a new one is linked by its verified email to an account (or a sign-up)."""
        if not issuer or not subject:
            raise InvalidArgumentError("issuer and subject are required")
        at = now()
        async with self.db.write() as conn:
            row = (
                await conn.execute(
                    select(sign_in_identities.c.id, sign_in_identities.c.account_id).where(
                        sign_in_identities.c.issuer == issuer, sign_in_identities.c.subject == subject
                    )
                )
            ).first()
            if row is not None:
                account_id = row.account_id
                await conn.execute(
                    update(sign_in_identities)
                    .where(sign_in_identities.c.id == row.id)
                    .values(last_sign_in_time=at)
                )
            else:
                if not email_verified:
                    raise UnauthenticatedError("the provider did not verify this email address")
                normalised = normalise_email(email)
                account_id = await self._account_for_email(conn, normalised, at)
                await conn.execute(
                    insert(sign_in_identities).values(
                        id=random_id("idn"),
                        account_id=account_id,
                        issuer=issuer,
                        subject=subject,
                        email=normalised,
                        create_time=at,
                        last_sign_in_time=at,
                    )
                )
            return await self._open_session(conn, account_id, SignInMethod.OIDC, at)

    async def _account_for_email(self, conn: AsyncConnection, email: str, at: datetime) -> str:
        """The account of an email, or a new one when the sign-up policy allows it."""
        existing = await conn.scalar(select(accounts.c.id).where(accounts.c.email == email))
        if existing:
            return str(existing)
        if not self.signup.allows(email):
            raise UnauthenticatedError("this email address may not sign in here")
        account_id = random_id("acc")
        credits = self.signup.credits
        try:
            async with conn.begin_nested():
                await insert_account(conn, account_id, email, credits=credits, at=at, note="sign-up credits")
        except IntegrityError:  # made a moment ago by another sign-in
            return str(await conn.scalar(select(accounts.c.id).where(accounts.c.email == email)))
        return account_id

    # Sessions

    async def _open_session(
        self, conn: AsyncConnection, account_id: str, method: SignInMethod, at: datetime
    ) -> tuple[str, Session]:
        account = await _portal_account(conn, account_id)
        if account.disabled:
            raise UnauthenticatedError("this account is disabled")
        # Sessions past their absolute end; ended or idle ones go when that comes too.
        await conn.execute(delete(sessions).where(sessions.c.expire_time < at - PURGE_AFTER))
        secret = people.new_secret(people.SESSION_PREFIX)
        expire = at + self.lifetimes.absolute
        session_id = random_id("ses")
        await conn.execute(
            insert(sessions).values(
                id=session_id,
                token_hash=people.hash_secret(secret),
                account_id=account_id,
                method=method.value,
                create_time=at,
                last_seen_time=at,
                expire_time=expire,
                end_time=None,
            )
        )
        session = Session(
            id=session_id,
            account=account,
            create_time=at,
            expire_time=expire,
            idle_expire_time=self.lifetimes.idle_expire(at, expire),
        )
        return secret, session

    async def session(self, secret: str) -> Session:
        """The live session of a secret (UnauthenticatedError otherwise); marks it used."""
        if not people.plausible(secret, people.SESSION_PREFIX):
            raise UnauthenticatedError(INVALID_SESSION)
        at = now()
        query = (
            select(
                *PORTAL_ACCOUNT_COLUMNS,
                sessions.c.id.label("session_id"),
                sessions.c.create_time.label("session_create_time"),
                sessions.c.last_seen_time,
                sessions.c.expire_time,
                sessions.c.end_time,
            )
            .join(accounts, accounts.c.id == sessions.c.account_id)
            .where(sessions.c.token_hash == people.hash_secret(secret))
        )
        async with self.db.read() as conn:
            row = (await conn.execute(query)).first()
        if (
            row is None
            or row.end_time is not None
            or row.disable_time is not None
            or at >= row.expire_time
            or at >= self.lifetimes.idle_expire(row.last_seen_time, row.expire_time)
        ):
            raise UnauthenticatedError(INVALID_SESSION)
        last_seen = row.last_seen_time
        if at - last_seen >= people.TOUCH_RESOLUTION:
            async with self.db.write() as conn:
                await conn.execute(
                    update(sessions).where(sessions.c.id == row.session_id).values(last_seen_time=at)
                )
            last_seen = at
        return Session(
            id=row.session_id,
            account=to_portal_account(row),
            create_time=row.session_create_time,
            expire_time=row.expire_time,
            idle_expire_time=self.lifetimes.idle_expire(last_seen, row.expire_time),
        )

    async def end_session(self, secret: str) -> None:
        """Ends a session; an unknown or ended one changes nothing."""
        if not people.plausible(secret, people.SESSION_PREFIX):
            return
        async with self.db.write() as conn:
            await conn.execute(
                update(sessions)
                .where(sessions.c.token_hash == people.hash_secret(secret), sessions.c.end_time.is_(None))
                .values(end_time=now())
            )

    async def admin_session(self, secret: str) -> Session:
        session = await self.session(secret)
        if session.account.role is not Role.ADMIN:
            raise PermissionDeniedError("this needs the admin role")
        return session

    # The session's own account

    async def revoke_own_token(self, account_id: str, token_id: str) -> ApiToken:
        """Revokes a token of this account; another account's token is NOT_FOUND, like a missing one."""
        async with self.db.write() as conn:
            await conn.execute(
                update(api_tokens)
                .where(
                    api_tokens.c.id == token_id,
                    api_tokens.c.account_id == account_id,
                    api_tokens.c.revoke_time.is_(None),
                )
                .values(revoke_time=now())
            )
            row = (
                await conn.execute(
                    select(*TOKEN_COLUMNS).where(
                        api_tokens.c.id == token_id, api_tokens.c.account_id == account_id
                    )
                )
            ).first()
        if row is None:
            raise NotFoundError(f"no token {token_id!r}")
        return to_token(row)

    # Administration

    async def search(self, query: str, limit: int = 0) -> list[PortalAccount]:
        size = min(limit or 50, MAX_SEARCH_RESULTS)
        statement = select(*PORTAL_ACCOUNT_COLUMNS).order_by(accounts.c.email).limit(size)
        query = query.strip().lower()
        if query:
            escaped = query.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            statement = statement.where(
                or_(accounts.c.email.like(f"%{escaped}%", escape="\\"), accounts.c.id == query)
            )
        async with self.db.read() as conn:
            return [to_portal_account(row) for row in (await conn.execute(statement)).all()]

    async def account(self, alias: str) -> PortalAccount:
        async with self.db.read() as conn:
            return await _portal_account(conn, alias)

    async def set_disabled(self, alias: str, disabled: bool) -> PortalAccount:
        """Disables an account (its tokens and sessions stop working at once) or enables it again."""
        async with self.db.write() as conn:
            account = await _portal_account(conn, alias)
            await conn.execute(
                update(accounts)
                .where(accounts.c.id == account.account.id)
                .values(disable_time=now() if disabled else None)
            )
            return await _portal_account(conn, account.account.id)

    async def set_role(self, alias: str, role: Role) -> PortalAccount:
        async with self.db.write() as conn:
            account = await _portal_account(conn, alias)
            await conn.execute(
                update(accounts).where(accounts.c.id == account.account.id).values(role=role.value)
            )
            return await _portal_account(conn, account.account.id)


async def _portal_account(conn: AsyncConnection, alias: str) -> PortalAccount:
    account: Account = await account_by_alias(conn, alias)
    row = (await conn.execute(select(*PORTAL_ACCOUNT_COLUMNS).where(accounts.c.id == account.id))).one()
    return to_portal_account(row)
