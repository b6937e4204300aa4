"""One way to reach Temporal: configured as Temporal's own tools are, payloads sealed by the codec.

The connection comes from `temporalio.envconfig`, which reads what the `temporal` CLI reads:
TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE, TEMPORAL_API_KEY, TEMPORAL_TLS_* and a profile
(TEMPORAL_PROFILE) of the `temporal.toml` file (TEMPORAL_CONFIG_FILE, else the user's config
folder). So whatever lets an operator's CLI reach a cluster or Temporal Cloud lets Keepflow reach
it. Keepflow's `.env` file counts too, below the process environment, as it does for Keepflow's
own settings. Settings.temporal_address / temporal_namespace, when set (by `keepflow dev` for its
embedded server, by tests), win over the profile.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
from pathlib import Path

from dotenv import dotenv_values
from temporalio.client import Client
from temporalio.converter import DataConverter
from temporalio.envconfig import ClientConfigProfile

from keepflow import tracing
from keepflow.runtime.codec import data_converter
from keepflow.runtime.payload_keys import PayloadKey, parse_payload_keys
from keepflow.runtime.payload_parts import PartsCodec
from keepflow.settings import Settings

DEFAULT_ADDRESS = "127.0.0.1:7233"


class TemporalUnreachable(ConnectionError):
    """Temporal could not be reached; the message says where and why in words an operator can act on."""

    def __init__(self, address: str, namespace: str, reason: str):
        super().__init__(f"cannot reach Temporal at {address} (namespace {namespace}): {reason}")
        self.reason = reason


def temporal_profile(settings: Settings) -> ClientConfigProfile:
    """The connection the `temporal` CLI would use here, with Keepflow's own overrides on top."""
    env_file = Settings.model_config.get("env_file")
    from_file = dotenv_values(env_file) if isinstance(env_file, str) and Path(env_file).is_file() else {}
    environment = {k: v for k, v in from_file.items() if k.startswith("TEMPORAL_") and v is not None}
    environment.update(os.environ)
    profile = ClientConfigProfile.load(override_env_vars=environment)
    if settings.temporal_address:
        profile = dataclasses.replace(profile, address=settings.temporal_address)
    if settings.temporal_namespace:
        profile = dataclasses.replace(profile, namespace=settings.temporal_namespace)
    return profile


def converter(settings: Settings) -> DataConverter:
    """Payloads sealed with KEEPFLOW_PAYLOAD_KEYS; definitions and contexts kept in the store."""
    return data_converter(payload_keys(settings), PartsCodec(settings.resolved_database_url))


def payload_keys(settings: Settings) -> list[PayloadKey]:
    return parse_payload_keys(settings.payload_keys.get_secret_value()) if settings.payload_keys else []


async def connect(settings: Settings, *, address: str | None = None) -> Client:
    """A client for the configured Temporal (or `address`, for an embedded or test server), with
    pydantic payloads sealed by the keys in KEEPFLOW_PAYLOAD_KEYS. Raises TemporalUnreachable."""
    config = temporal_profile(settings).to_client_connect_config()
    if address:
        config["target_host"] = address
    config.setdefault("target_host", DEFAULT_ADDRESS)
    config.setdefault("namespace", "default")
    try:
        # The worker built on this client takes its interceptors too: one place for both.
        return await Client.connect(**config, data_converter=converter(settings), interceptors=tracing.interceptors())
    except RuntimeError as err:
        raise TemporalUnreachable(config["target_host"], config["namespace"], why_unreachable(err, tls=bool(config.get("tls")))) from err


_CLIENT_CERT = ("TLS handshake failed: the server closed the connection during the handshake; does it require a "
                "client certificate (TEMPORAL_TLS_CLIENT_CERT_PATH, TEMPORAL_TLS_CLIENT_KEY_PATH) signed by a CA it trusts?")
# Over TLS 1.3 a server refusing the client's certificate (or its lack of one) hangs up right after
# the client thinks the handshake is done: the client sees an unexpected EOF or a broken pipe.
_CLOSED = re.compile(r"close_notify|UnexpectedEof|BrokenPipe|connection reset|ConnectionReset|stream closed|connection closed")

# The Rust core reports connection failures as one debug string; these are the ones an operator
# meets while setting TLS up, told in words that point at the setting to change.
_REASONS = [
    (re.compile(r"InvalidCertificate\((\w+)"),
     "TLS handshake failed: the server's certificate was rejected ({0}); is TEMPORAL_TLS_SERVER_CA_CERT_PATH "
     "the CA that signed it, and TEMPORAL_TLS_SERVER_NAME a name in it?"),
    (re.compile(r"CertificateRequired|HandshakeFailure"), _CLIENT_CERT),
    (re.compile(r"InvalidContentType|corrupt message|wrong version number"),
     "TLS handshake failed: the server does not speak TLS at this address; unset the TEMPORAL_TLS_* settings"),
    (re.compile(r"BrokenPipe|connection reset|ConnectionReset|stream closed|connection closed"),
     "the server closed the connection; if it expects TLS, set TEMPORAL_TLS=true or TEMPORAL_TLS_SERVER_CA_CERT_PATH"),
    (re.compile(r"Connection refused|ConnectionRefused"), "connection refused: nothing listens at that address"),
]


def why_unreachable(err: BaseException, *, tls: bool = False) -> str:
    """Why a connection failed, in a line: what /healthz and a refusing process print."""
    if isinstance(err, TemporalUnreachable):
        return err.reason
    if isinstance(err, (TimeoutError, asyncio.TimeoutError)):
        return "no answer in time"
    text = str(err)
    if tls and _CLOSED.search(text) and "InvalidCertificate" not in text:
        return _CLIENT_CERT
    for pattern, reason in _REASONS:
        if found := pattern.search(text):
            return reason.format(*found.groups())
    text = text.removeprefix("Failed client connect: ")
    return f"{type(err).__name__}: {text[:300]}" if text else type(err).__name__
