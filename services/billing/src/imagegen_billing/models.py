"""Billing's tables. The Alembic migrations create exactly this schema (a test compares them)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import cast

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Deterministic constraint names, so that migrations can name what they alter.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# SQLite only auto-increments an INTEGER PRIMARY KEY.
BigIntId = BigInteger().with_variant(Integer(), "sqlite")


class UtcDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out, on every database. SQLite keeps naive UTC text."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class AccountRow(Base):
    __tablename__ = "accounts"
    __table_args__ = (
        # No check on `credits`: a refund or dispute may take it below zero (payment_rules.py); every
        # other change is a conditional UPDATE that keeps it at or above zero.
        CheckConstraint("reserved_credits >= 0", name="reserved_not_negative"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    email: Mapped[str] = mapped_column(String(254), unique=True)
    # Always the sum of the account's ledger entries; changed in the same transaction as they are.
    credits: Mapped[int] = mapped_column(BigInteger)
    # Sum of the account's held reservations (already taken off `credits`).
    reserved_credits: Mapped[int] = mapped_column(BigInteger)
    create_time: Mapped[datetime] = mapped_column(UtcDateTime())
    # The portal (people.py): "user" or "admin"; a disabled account's tokens and sessions do not work.
    role: Mapped[str] = mapped_column(String(16), server_default=text("'user'"))
    disable_time: Mapped[datetime | None] = mapped_column(UtcDateTime())


class ApiTokenRow(Base):
    __tablename__ = "api_tokens"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    label: Mapped[str] = mapped_column(String(200))
    create_time: Mapped[datetime] = mapped_column(UtcDateTime())
    last_used_time: Mapped[datetime | None] = mapped_column(UtcDateTime())
    revoke_time: Mapped[datetime | None] = mapped_column(UtcDateTime())


class ReservationRow(Base):
    __tablename__ = "reservations"
    __table_args__ = (
        CheckConstraint("amount > 0", name="amount_positive"),
        # The reaper's query: held reservations by expire time.
        Index("ix_reservations_state_expire_time", "state", "expire_time"),
        Index("ix_reservations_account_id_state", "account_id", "state"),
        # An account's history, newest first, a page at a time (ListReservations).
        Index("ix_reservations_account_id_create_time", "account_id", "create_time", "job_id"),
    )

    job_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    amount: Mapped[int] = mapped_column(BigInteger)
    state: Mapped[str] = mapped_column(String(16))
    create_time: Mapped[datetime] = mapped_column(UtcDateTime())
    expire_time: Mapped[datetime] = mapped_column(UtcDateTime())
    settle_time: Mapped[datetime | None] = mapped_column(UtcDateTime())
    model: Mapped[str] = mapped_column(String(128))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    request_fingerprint: Mapped[str] = mapped_column(String(128))
    prompt: Mapped[str] = mapped_column(Text, default="", server_default="")
    # A ReleaseReason's value ("failed", "expired", …); "" until released.
    release_reason: Mapped[str] = mapped_column(String(16))
    release_detail: Mapped[str] = mapped_column(String(200), server_default=text("''"))
    start_time: Mapped[datetime | None] = mapped_column(UtcDateTime())
    # How the job ended (JobResult), set when the reservation settles.
    result_image_url: Mapped[str] = mapped_column(String(2048))
    result_mime_type: Mapped[str] = mapped_column(String(200))
    result_width: Mapped[int] = mapped_column(Integer)
    result_height: Mapped[int] = mapped_column(Integer)
    # A JobError's value ("content_rejected"); "" unless the job failed.
    result_error_code: Mapped[str] = mapped_column(String(200))
    result_error_message: Mapped[str] = mapped_column(String(1000))
    result_finish_time: Mapped[datetime | None] = mapped_column(UtcDateTime())
    # Delivery of the outcome to the job's webhook (webhook_state "" when the job has none).
    webhook_url: Mapped[str] = mapped_column(String(2048), server_default=text("''"))
    webhook_state: Mapped[str] = mapped_column(String(16), server_default=text("''"))
    webhook_attempt_count: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    webhook_last_status_code: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    webhook_last_error: Mapped[str] = mapped_column(String(1000), server_default=text("''"))
    webhook_last_attempt_time: Mapped[datetime | None] = mapped_column(UtcDateTime())


class WebhookAttemptRow(Base):
    """One attempt to deliver a job's outcome to its webhook, as the gateway reported it."""

    __tablename__ = "webhook_attempts"
    __table_args__ = (UniqueConstraint("job_id", "attempt"),)

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("reservations.job_id"))
    attempt: Mapped[int] = mapped_column(Integer)
    status_code: Mapped[int] = mapped_column(Integer)
    error: Mapped[str] = mapped_column(String(1000))
    attempt_time: Mapped[datetime] = mapped_column(UtcDateTime())


class AccountWebhookRow(Base):
    """An account's webhook settings: its default URL and the secret its deliveries are signed with."""

    __tablename__ = "account_webhooks"

    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), primary_key=True)
    url: Mapped[str] = mapped_column(String(2048))
    # Standard Webhooks secret ("whsec_" + base64); symmetric, so kept as it is (like a signing key).
    secret: Mapped[str] = mapped_column(String(128))
    create_time: Mapped[datetime] = mapped_column(UtcDateTime())
    update_time: Mapped[datetime] = mapped_column(UtcDateTime())


class LedgerEntryRow(Base):
    __tablename__ = "ledger_entries"
    __table_args__ = (
        Index("ix_ledger_entries_account_id_id", "account_id", "id"),
        Index("ix_ledger_entries_payment_key", "payment_key", unique=True),  # payments
    )

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    kind: Mapped[str] = mapped_column(String(16))
    amount: Mapped[int] = mapped_column(BigInteger)
    balance_after: Mapped[int] = mapped_column(BigInteger)
    job_id: Mapped[str | None] = mapped_column(String(128))
    note: Mapped[str] = mapped_column(String(200))
    create_time: Mapped[datetime] = mapped_column(UtcDateTime())
    # Payments: what makes the entry once ("purchase:cs_…", "refund:ch_…:<total>", "dispute:dp_…");
    # unique, so a replayed or concurrent Stripe event cannot write it twice. NULL for other entries.
    payment_key: Mapped[str | None] = mapped_column(String(255))


class PurchaseRow(Base):
    """A Stripe Checkout Session of an account for a credit pack (payments.py)."""

    __tablename__ = "purchases"
    __table_args__ = (Index("ix_purchases_account_id_create_time", "account_id", "create_time"),)

    checkout_session_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    pack_id: Mapped[str] = mapped_column(String(64))
    # What the pack was when the purchase was made: the grant uses these, never a Stripe amount.
    credits: Mapped[int] = mapped_column(BigInteger)
    amount: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    # A PurchaseState's value: "pending", "paid", "failed", "expired".
    state: Mapped[str] = mapped_column(String(16))
    payment_intent_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    credits_taken_back: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    flagged: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    create_time: Mapped[datetime] = mapped_column(UtcDateTime())
    paid_time: Mapped[datetime | None] = mapped_column(UtcDateTime())


class SignInIdentityRow(Base):
    """An OpenID Connect identity (issuer, subject) that signs in to an account."""

    __tablename__ = "sign_in_identities"
    __table_args__ = (UniqueConstraint("issuer", "subject"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    issuer: Mapped[str] = mapped_column(String(512))
    subject: Mapped[str] = mapped_column(String(255))
    email: Mapped[str] = mapped_column(String(254))
    create_time: Mapped[datetime] = mapped_column(UtcDateTime())
    last_sign_in_time: Mapped[datetime] = mapped_column(UtcDateTime())


class SessionRow(Base):
    """A signed-in browser session; only the SHA-256 of its secret is kept."""

    __tablename__ = "sessions"
    # Purging ended and expired sessions (portal.PURGE_AFTER past their end).
    __table_args__ = (Index("ix_sessions_expire_time", "expire_time"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    method: Mapped[str] = mapped_column(String(16))
    create_time: Mapped[datetime] = mapped_column(UtcDateTime())
    last_seen_time: Mapped[datetime] = mapped_column(UtcDateTime())
    expire_time: Mapped[datetime] = mapped_column(UtcDateTime())
    end_time: Mapped[datetime | None] = mapped_column(UtcDateTime())


class LoginLinkRow(Base):
    """A one-time sign-in link; only the SHA-256 of its secret is kept. ``account_id`` is empty for a
    sign-up (the account is made when the link is used)."""

    __tablename__ = "login_links"
    __table_args__ = (Index("ix_login_links_expire_time", "expire_time"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    email: Mapped[str] = mapped_column(String(254))
    account_id: Mapped[str | None] = mapped_column(ForeignKey("accounts.id"), index=True)
    next_path: Mapped[str] = mapped_column(String(2048))
    create_time: Mapped[datetime] = mapped_column(UtcDateTime())
    expire_time: Mapped[datetime] = mapped_column(UtcDateTime())
    use_time: Mapped[datetime | None] = mapped_column(UtcDateTime())


class SignInAttemptRow(Base):
    """A request for a sign-in link, kept for the rate limits' window."""

    __tablename__ = "sign_in_attempts"
    __table_args__ = (
        Index("ix_sign_in_attempts_email_create_time", "email", "create_time"),
        Index("ix_sign_in_attempts_client_address_create_time", "client_address", "create_time"),
        Index("ix_sign_in_attempts_create_time", "create_time"),
    )

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    email: Mapped[str] = mapped_column(String(254))
    client_address: Mapped[str] = mapped_column(String(64))
    create_time: Mapped[datetime] = mapped_column(UtcDateTime())


class OAuthClientRow(Base):
    """An OAuth client (issue 12): registered dynamically, cached from its metadata document (its id is
    the document's URL), or made by an operator. Only the SHA-256 of a client secret is kept."""

    __tablename__ = "oauth_clients"

    id: Mapped[str] = mapped_column(String(2048), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    client_name: Mapped[str] = mapped_column(String(255))
    metadata_json: Mapped[str] = mapped_column(Text())
    secret_hash: Mapped[str | None] = mapped_column(String(64))
    create_time: Mapped[datetime] = mapped_column(UtcDateTime())
    update_time: Mapped[datetime] = mapped_column(UtcDateTime())


class OAuthGrantRow(Base):
    """An account's approval of a client for a scope set (remembered consent); its tokens live as long
    as it does."""

    __tablename__ = "oauth_grants"
    __table_args__ = (Index("ix_oauth_grants_account_id_client_id", "account_id", "client_id"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    client_id: Mapped[str] = mapped_column(ForeignKey("oauth_clients.id"), index=True)
    scopes: Mapped[str] = mapped_column(String(255))
    create_time: Mapped[datetime] = mapped_column(UtcDateTime())
    last_used_time: Mapped[datetime | None] = mapped_column(UtcDateTime())
    revoke_time: Mapped[datetime | None] = mapped_column(UtcDateTime())


class OAuthCodeRow(Base):
    """A one-time authorization code (SHA-256 only), bound to its grant, redirect URI, PKCE challenge
    and resource."""

    __tablename__ = "oauth_codes"
    __table_args__ = (Index("ix_oauth_codes_expire_time", "expire_time"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    code_hash: Mapped[str] = mapped_column(String(64), unique=True)
    grant_id: Mapped[str] = mapped_column(ForeignKey("oauth_grants.id"), index=True)
    redirect_uri: Mapped[str] = mapped_column(String(2048))
    code_challenge: Mapped[str] = mapped_column(String(128))
    resource: Mapped[str] = mapped_column(String(2048))
    scopes: Mapped[str] = mapped_column(String(255))
    create_time: Mapped[datetime] = mapped_column(UtcDateTime())
    expire_time: Mapped[datetime] = mapped_column(UtcDateTime())
    use_time: Mapped[datetime | None] = mapped_column(UtcDateTime())


class OAuthTokenRow(Base):
    """An access or refresh token (SHA-256 only) of a grant. A refresh token is used once (rotation)."""

    __tablename__ = "oauth_tokens"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    kind: Mapped[str] = mapped_column(String(16))
    grant_id: Mapped[str] = mapped_column(ForeignKey("oauth_grants.id"), index=True)
    scopes: Mapped[str] = mapped_column(String(255))
    resource: Mapped[str] = mapped_column(String(2048))
    create_time: Mapped[datetime] = mapped_column(UtcDateTime())
    expire_time: Mapped[datetime] = mapped_column(UtcDateTime())
    use_time: Mapped[datetime | None] = mapped_column(UtcDateTime())
    revoke_time: Mapped[datetime | None] = mapped_column(UtcDateTime())


accounts = cast(Table, AccountRow.__table__)
api_tokens = cast(Table, ApiTokenRow.__table__)
reservations = cast(Table, ReservationRow.__table__)
ledger_entries = cast(Table, LedgerEntryRow.__table__)
webhook_attempts = cast(Table, WebhookAttemptRow.__table__)
account_webhooks = cast(Table, AccountWebhookRow.__table__)
sign_in_identities = cast(Table, SignInIdentityRow.__table__)
sessions = cast(Table, SessionRow.__table__)
login_links = cast(Table, LoginLinkRow.__table__)
sign_in_attempts = cast(Table, SignInAttemptRow.__table__)
purchases = cast(Table, PurchaseRow.__table__)
oauth_clients = cast(Table, OAuthClientRow.__table__)
oauth_grants = cast(Table, OAuthGrantRow.__table__)
oauth_codes = cast(Table, OAuthCodeRow.__table__)
oauth_tokens = cast(Table, OAuthTokenRow.__table__)
