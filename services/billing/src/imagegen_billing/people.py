"""The portal's rules for people: who may sign up, how long sessions and sign-in links live, which
paths a sign-in may return to, and the secrets of sessions and links. Plain Python, no database."""

from __future__ import annotations

import enum
import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from imagegen_billing.domain import Account, BillingError

#: Prefixes of the secrets, so that a leaked one is recognisable (and never taken for an API token).
SESSION_PREFIX = "igs_"
LINK_PREFIX = "igl_"
SECRET_BYTES = 32
MAX_SECRET_CHARS = 128
#: A session's last-seen time is written at most this often, so that GetSession stays mostly a read.
TOUCH_RESOLUTION = timedelta(minutes=1)


class RateLimitedError(BillingError):
    """Too many sign-in requests for an email or from an address (RESOURCE_EXHAUSTED)."""


class PermissionDeniedError(BillingError):
    """The session's account may not do this (PERMISSION_DENIED)."""


class SignupPolicy(enum.StrEnum):
    #: Anyone may make an account by signing in.
    OPEN = "open"
    #: People whose email is in one of the allowed domains.
    DOMAINS = "domains"
    #: Only existing accounts (made by an operator) may sign in.
    INVITE = "invite"


class Role(enum.StrEnum):
    USER = "user"
    ADMIN = "admin"


class SignInMethod(enum.StrEnum):
    EMAIL = "email"
    OIDC = "oidc"


@dataclass(frozen=True, slots=True)
class PortalAccount:
    account: Account
    role: Role
    disabled: bool


@dataclass(frozen=True, slots=True)
class Session:
    id: str
    account: PortalAccount
    create_time: datetime
    expire_time: datetime
    idle_expire_time: datetime


@dataclass(frozen=True, slots=True)
class SessionLifetimes:
    """A session ends after ``idle`` without use, and after ``absolute`` in any case."""

    idle: timedelta
    absolute: timedelta

    def idle_expire(self, last_seen: datetime, expire: datetime) -> datetime:
        return min(last_seen + self.idle, expire)


@dataclass(frozen=True, slots=True)
class SignupRules:
    policy: SignupPolicy
    domains: frozenset[str]
    credits: int

    def allows(self, email: str) -> bool:
        """Whether a person with this (normalised) email may make an account by signing in."""
        if self.policy is SignupPolicy.OPEN:
            return True
        if self.policy is SignupPolicy.DOMAINS:
            return email.rpartition("@")[2] in self.domains
        return False


def new_secret(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(SECRET_BYTES)


def hash_secret(secret: str) -> str:
    """Hex SHA-256: the secrets are long and random, so no salt or slow hash is needed."""
    return hashlib.sha256(secret.encode()).hexdigest()


def plausible(secret: str, prefix: str) -> bool:
    return secret.startswith(prefix) and len(secret) <= MAX_SECRET_CHARS


def role_of(value: str) -> Role:
    try:
        return Role(value)
    except ValueError:
        return Role.USER
