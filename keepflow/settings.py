"""Runtime configuration, read once from the environment (and `.env` if present)."""

from __future__ import annotations

import base64
import os
import secrets
from datetime import timedelta
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from keepflow.language.durations import Duration


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", validate_by_name=True)

    # Where things live. Relative paths resolve against the working directory.
    data_dir: Path = Field(Path("var"), validation_alias="KEEPFLOW_DATA_DIR")
    sequences_path: Path = Field(Path("sequences.yaml"), validation_alias="KEEPFLOW_SEQUENCES")
    # None: the `templates/` folder beside the sequences file.
    templates_dir: Path | None = Field(None, validation_alias="KEEPFLOW_TEMPLATES")

    # Temporal. The connection is read as the `temporal` CLI reads it (TEMPORAL_ADDRESS,
    # TEMPORAL_NAMESPACE, TEMPORAL_API_KEY, TEMPORAL_TLS_*, TEMPORAL_PROFILE of temporal.toml: see
    # keepflow/runtime/client.py); these two, when set, win over the profile. No address anywhere
    # means "start the embedded dev server" for `keepflow dev`, 127.0.0.1:7233 for the rest.
    temporal_address: str | None = Field(None, validation_alias="TEMPORAL_ADDRESS")
    temporal_namespace: str | None = Field(None, validation_alias="TEMPORAL_NAMESPACE")
    task_queue: str = Field("keepflow", validation_alias="KEEPFLOW_TASK_QUEUE")

    # None: a SQLite file under data_dir.
    database_url: str | None = Field(None, validation_alias="DATABASE_URL")

    # Providers. "auto" picks the real provider when its credentials are set, else the outbox.
    email_provider: Literal["auto", "outbox", "sendgrid"] = Field("auto", validation_alias="KEEPFLOW_EMAIL_PROVIDER")
    sms_provider: Literal["auto", "outbox", "twilio"] = Field("auto", validation_alias="KEEPFLOW_SMS_PROVIDER")
    # No display name: the brand's name from sequences.yaml is used (providers.named_sender).
    email_from: str = Field("shop@example.com", validation_alias="KEEPFLOW_EMAIL_FROM")
    sendgrid_api_key: SecretStr | None = Field(None, validation_alias="SENDGRID_API_KEY")
    # The SendGrid unsubscribe group (Suppressions > Unsubscribe Groups) marketing email goes out in,
    # so a spam report or a SendGrid unsubscribe on it cannot block order mail. None: no group.
    sendgrid_asm_group_id: int | None = Field(None, validation_alias="KEEPFLOW_SENDGRID_ASM_GROUP_ID")
    # Only for tests and proxies: the SDK's default is https://api.sendgrid.com.
    sendgrid_host: str = Field("https://api.sendgrid.com", validation_alias="SENDGRID_HOST")
    twilio_account_sid: str | None = Field(None, validation_alias="TWILIO_ACCOUNT_SID")
    twilio_auth_token: SecretStr | None = Field(None, validation_alias="TWILIO_AUTH_TOKEN")
    twilio_from: str | None = Field(None, validation_alias="TWILIO_FROM_NUMBER")
    twilio_messaging_service_sid: str | None = Field(None, validation_alias="TWILIO_MESSAGING_SERVICE_SID")
    twilio_base_url: str | None = Field(None, validation_alias="TWILIO_BASE_URL")
    # A LINE Messaging API channel (LINE Developers console): the token pushes messages, the secret
    # verifies the signature of LINE's webhooks.
    line_channel_access_token: SecretStr | None = Field(None, validation_alias="LINE_CHANNEL_ACCESS_TOKEN")
    line_channel_secret: SecretStr | None = Field(None, validation_alias="LINE_CHANNEL_SECRET")
    # Only for tests and proxies, like SENDGRID_HOST.
    line_api_base: str = Field("https://api.line.me", validation_alias="LINE_API_BASE")
    # Seconds a provider HTTP call may take; kept well under the send activity's timeout.
    provider_timeout: float = Field(10.0, validation_alias="KEEPFLOW_PROVIDER_TIMEOUT")
    # Run workflows in Temporal's Python sandbox, which fails a workflow task that reads the clock,
    # a file or the environment. A check for whoever edits workflows/: `make test` and `keepflow dev`
    # run with it; a production worker runs the same, checked code without it, which takes about a
    # quarter off a run's worker CPU (bench/RESULTS.md, "Where the CPU went, and what came off").
    workflow_sandbox: bool = Field(False, validation_alias="KEEPFLOW_WORKFLOW_SANDBOX")

    default_locale: str = Field("en", validation_alias="KEEPFLOW_DEFAULT_LOCALE")
    # How often the inactivity scan runs (a Temporal Schedule, synced when a worker starts).
    scan_every: Duration = Field(timedelta(hours=1), validation_alias="KEEPFLOW_SCAN_EVERY")
    # How often every customer's RFM scores are recomputed (one customer's also after each order).
    scores_every: Duration = Field(timedelta(days=1), validation_alias="KEEPFLOW_SCORES_EVERY")

    # Webhooks in. KEEPFLOW_WEBHOOK_SECRET holds one or more `whsec_...` secrets (space or comma
    # separated) so a rotation can accept the old and the new at once.
    webhook_secret: SecretStr | None = Field(None, validation_alias="KEEPFLOW_WEBHOOK_SECRET")
    shopify_secret: SecretStr | None = Field(None, validation_alias="SHOPIFY_WEBHOOK_SECRET")
    shopify_previous_secret: SecretStr | None = Field(None, validation_alias="SHOPIFY_WEBHOOK_SECRET_PREVIOUS")
    # Shopify signs no timestamp; refuse deliveries triggered longer ago than this. Shopify retries a
    # failed delivery for up to 48 h with its original trigger time, so the bound must exceed that.
    shopify_max_age: Duration = Field(timedelta(hours=50), validation_alias="KEEPFLOW_SHOPIFY_MAX_AGE")
    # The HTTPS address customers and providers reach this app at (e.g. https://mail.shop.example):
    # unsubscribe links and Twilio status callbacks are built on it. None: links use http_host:port.
    public_url: str | None = Field(None, validation_alias="KEEPFLOW_PUBLIC_URL")
    # Encrypts unsubscribe tokens; one or more secrets (space or comma separated), the first
    # encrypts, all decrypt, so a rotation keeps old links working. Required in production; under
    # `keepflow dev` (and in tests) None means one derived from the dev secret in data_dir, which
    # the worker and the web app share, so neither can invent a key the other does not know.
    unsubscribe_secret: SecretStr | None = Field(None, validation_alias="KEEPFLOW_UNSUBSCRIBE_SECRET")
    # Optional `mailto:` target for List-Unsubscribe, e.g. unsubscribe@shop.example.
    unsubscribe_mailto: str | None = Field(None, validation_alias="KEEPFLOW_UNSUBSCRIBE_MAILTO")
    # SendGrid's event webhook verification key (base64 DER, from the Mail Settings page).
    sendgrid_webhook_public_key: str | None = Field(None, validation_alias="SENDGRID_WEBHOOK_PUBLIC_KEY")
    # Behind a reverse proxy: rebuild the URL Twilio signed from X-Forwarded-Proto/-Host.
    trust_forwarded_headers: bool = Field(False, validation_alias="KEEPFLOW_TRUST_FORWARDED_HEADERS")
    # The first marketing text to a number ends with "Reply STOP to opt out" (keepflow/sending/sms_opt_out.py).
    # Off when the Twilio Messaging Service appends its own opt-out line, so it is not there twice.
    sms_opt_out_line: bool = Field(True, validation_alias="KEEPFLOW_SMS_OPT_OUT_LINE")
    # The answer to an SMS HELP. None: one naming `brand.name` of sequences.yaml (keepflow/http/twilio.py).
    sms_help_text: str | None = Field(None, validation_alias="KEEPFLOW_SMS_HELP_TEXT")
    http_host: str = Field("127.0.0.1", validation_alias="KEEPFLOW_HTTP_HOST")
    http_port: int = Field(8000, validation_alias="KEEPFLOW_HTTP_PORT")
    # The admin app (dashboard, API docs, codec endpoint): its own listener, on loopback unless told.
    admin_host: str = Field("127.0.0.1", validation_alias="KEEPFLOW_ADMIN_HOST")
    admin_port: int = Field(8001, validation_alias="KEEPFLOW_ADMIN_PORT")
    # The address people open the dashboard at, e.g. https://keepflow.shop.internal behind the
    # company's proxy. https: the session cookie is Secure. OpenID Connect returns to
    # <admin_url>/signin/oidc/callback. None: http://admin_host:admin_port.
    admin_url: str | None = Field(None, validation_alias="KEEPFLOW_ADMIN_URL")
    # Signs the dashboard's session cookies (itsdangerous). `keepflow dev` makes one in data_dir.
    session_secret: SecretStr | None = Field(None, validation_alias="KEEPFLOW_SESSION_SECRET")
    # Sign-in with OpenID Connect: the provider's issuer URL (its discovery document is at
    # <issuer>/.well-known/openid-configuration) and this app's client there. Anyone the provider
    # signs in for this client is a marketer; the verified emails in KEEPFLOW_OIDC_ADMINS (space
    # or comma separated) are admins.
    oidc_issuer: str | None = Field(None, validation_alias="KEEPFLOW_OIDC_ISSUER")
    oidc_client_id: str | None = Field(None, validation_alias="KEEPFLOW_OIDC_CLIENT_ID")
    oidc_client_secret: SecretStr | None = Field(None, validation_alias="KEEPFLOW_OIDC_CLIENT_SECRET")
    oidc_admins: str = Field("", validation_alias="KEEPFLOW_OIDC_ADMINS")
    # Keys for the Temporal payload codec (AES-256-GCM): one or more `id:base64key` entries, space or
    # comma separated; the first encrypts, all decrypt, so a rotation keeps old runs readable.
    payload_keys: SecretStr | None = Field(None, validation_alias="KEEPFLOW_PAYLOAD_KEYS")
    # Bearer token for the codec endpoint (keepflow/http/codec.py), e.g. for
    # `temporal workflow show --codec-auth "Bearer TOKEN"`. None: no token opens it.
    codec_token: SecretStr | None = Field(None, validation_alias="KEEPFLOW_CODEC_TOKEN")
    # Origins of the Temporal web UI allowed to call the admin app's codec endpoint from a browser
    # (space or comma separated), e.g. https://temporal.shop.example.
    codec_ui_origin_list: str = Field("", validation_alias="KEEPFLOW_CODEC_UI_ORIGINS")
    # A production process without a real provider refuses to start unless this says the outbox is meant.
    allow_outbox: bool = Field(False, validation_alias="KEEPFLOW_ALLOW_OUTBOX")
    max_body_bytes: int = Field(1024 * 1024, validation_alias="KEEPFLOW_MAX_BODY_BYTES")
    # How processes log (keepflow/logs.py). None: readable lines under `keepflow dev`, JSON lines
    # from every other long-running command, as a log collector reads them.
    log_format: Literal["json", "text"] | None = Field(None, validation_alias="KEEPFLOW_LOG_FORMAT")

    def log_style(self, dev: bool = False) -> Literal["json", "text"]:
        return self.log_format or ("text" if dev else "json")

    @property
    def webhook_secrets(self) -> list[str]:
        return _listed(self.webhook_secret)

    @property
    def shopify_secrets(self) -> list[str]:
        return [s.get_secret_value() for s in (self.shopify_secret, self.shopify_previous_secret)
                if s and s.get_secret_value()]

    @property
    def unsubscribe_secrets(self) -> list[str]:
        """The configured unsubscribe secrets, the encrypting one first; else the dev fallback."""
        return _listed(self.unsubscribe_secret) or [dev_secret(self.data_dir)]

    @property
    def resolved_admin_url(self) -> str:
        return (self.admin_url or f"http://{self.admin_host}:{self.admin_port}").rstrip("/")

    @property
    def codec_ui_origins(self) -> list[str]:
        return self.codec_ui_origin_list.replace(",", " ").split()

    @property
    def oidc_admin_emails(self) -> set[str]:
        return {e.lower() for e in self.oidc_admins.replace(",", " ").split()}

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.data_dir / 'keepflow.db'}"

    @property
    def resolved_templates_dir(self) -> Path:
        return self.templates_dir or self.sequences_path.parent / "templates"

    @property
    def use_sendgrid(self) -> bool:
        if self.email_provider == "auto":
            return bool(reveal(self.sendgrid_api_key))
        return self.email_provider == "sendgrid"

    @property
    def use_line(self) -> bool:
        return bool(reveal(self.line_channel_access_token))

    @property
    def use_twilio(self) -> bool:
        if self.sms_provider == "auto":
            return bool(self.twilio_account_sid and reveal(self.twilio_auth_token))
        return self.sms_provider == "twilio"


def reveal(secret: SecretStr | None) -> str:
    """A secret's value for the one call that needs it (an SDK, a MAC); "" when unset."""
    return secret.get_secret_value() if secret is not None else ""


def _listed(secret: SecretStr | None) -> list[str]:
    return reveal(secret).replace(",", " ").split()


@lru_cache
def get_settings() -> Settings:
    return Settings()


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def dev_secret(data_dir: Path, name: str = "webhook-secret") -> str:
    """A development secret kept in `data_dir/name` when none is configured: the webhook secret
    `keepflow dev` and `keepflow send-event` share, the dashboard's session secret."""
    path = data_dir / name
    if not path.exists():
        private_dir(data_dir)
        # Created 0600 from the first byte: a chmod after writing leaves a moment it is readable.
        with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as file:
            file.write(new_secret() + "\n")
    return path.read_text().strip()


def private_dir(path: Path) -> Path:
    """Create `path` (and parents) for files only this user may read: customer data, secrets."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path
