"""The payload codec: every payload Keepflow hands Temporal is sealed with AES-256-GCM first.

Run inputs, signals and activity requests carry names, emails, phones and orders. Sealed, the
Temporal server (and anyone with its UI or CLI) holds only ciphertext; Keepflow's clients and
workers, and its codec endpoint for people allowed to read them, open them again.

A sealed payload is `nonce || ciphertext+tag` with metadata `encoding: binary/encrypted` and
`encryption-key-id`, the layout of Temporal's encryption samples, so other SDKs' codecs can read it.
The key id is authenticated as associated data: relabelling a payload with another id fails.
Payloads without that encoding pass through untouched: runs recorded before encryption was on
still replay and read.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from temporalio.api.common.v1 import Payload
from temporalio.converter import DataConverter, DefaultFailureConverterWithEncodedAttributes, PayloadCodec

from keepflow.runtime.converter import PayloadConverter
from keepflow.runtime.payload_keys import PayloadKey

ENCODING = b"binary/encrypted"
KEY_ID = "encryption-key-id"
NONCE_BYTES = 12  # GCM's standard nonce, random per payload


class EncryptionCodec(PayloadCodec):
    def __init__(self, keys: Sequence[PayloadKey]) -> None:
        self._sealing = keys[0] if keys else None
        self._ciphers = {k.id: AESGCM(k.secret) for k in keys}

    @property
    def key_ids(self) -> list[str]:
        return list(self._ciphers)

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        if self._sealing is None:  # no keys: development or tests without a key, nothing to seal with
            return list(payloads)
        key_id = self._sealing.id.encode()
        cipher = self._ciphers[self._sealing.id]
        sealed = []
        for payload in payloads:
            nonce = os.urandom(NONCE_BYTES)
            data = nonce + cipher.encrypt(nonce, payload.SerializeToString(), key_id)
            sealed.append(Payload(metadata={"encoding": ENCODING, KEY_ID: key_id}, data=data))
        return sealed

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self._open(p) if p.metadata.get("encoding") == ENCODING else p for p in payloads]

    def _open(self, payload: Payload) -> Payload:
        key_id = payload.metadata.get(KEY_ID, b"").decode(errors="replace")
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            if not self._ciphers:
                raise ValueError(f"payload sealed with key {key_id!r}, but no KEEPFLOW_PAYLOAD_KEYS are set")
            raise ValueError(f"payload sealed with key {key_id!r}, which KEEPFLOW_PAYLOAD_KEYS has "
                             f"{', '.join(self._ciphers)} but not: put that entry back after the newest one")
        data = payload.data
        try:
            plain = cipher.decrypt(data[:NONCE_BYTES], data[NONCE_BYTES:], key_id.encode())
        except InvalidTag:
            raise ValueError(f"payload sealed with key {key_id!r} failed authentication: "
                             "that id names a different key here, or the payload was altered") from None
        return Payload.FromString(plain)


class Chain(PayloadCodec):
    """`first` on the way out, then `then`; opened in the reverse order."""

    def __init__(self, first: PayloadCodec, then: PayloadCodec) -> None:
        self.first, self.then = first, then

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return await self.then.encode(await self.first.encode(payloads))

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return await self.first.decode(await self.then.decode(payloads))


def data_converter(keys: Sequence[PayloadKey], parts: PayloadCodec | None = None) -> DataConverter:
    """Pydantic values, sealed; failures' messages and stack traces moved into a sealed payload
    too, since an error can quote an address. With `parts` (keepflow/runtime/payload_parts.py),
    definitions and contexts are moved to the store first and only their hashes are sealed."""
    codec: PayloadCodec = EncryptionCodec(keys)
    if parts is not None:
        codec = Chain(parts, codec)
    return DataConverter(payload_converter_class=PayloadConverter, payload_codec=codec,
                         failure_converter_class=DefaultFailureConverterWithEncodedAttributes)
