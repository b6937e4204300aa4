"""Definitions and contexts by reference: each kept once in the store, histories carry its hash.

A run's input used to carry its whole definition snapshot (every sequence it may start) and its
context (customer, order, event, brand); every send and `do` request carried the context again,
and every `start` the snapshot and context of the run it starts. Most of a journey's history was
those copies. This codec, applied before sealing, moves the `snapshot`, `context` and send `terms` of
any JSON payload into the store's `payload_parts` table under the sha256 of their bytes, and leaves
`{"$part": <sha256>}` in their place; opening the payload puts them back. The workflow and the
activities see the same values as before, so nothing in the interpreter changes and replay stays
exact: a hash always names the same bytes.

A part is written once: the first process to encode it inserts it (a second insert of the same
bytes does nothing), and every process keeps the parts it wrote or read in memory, so a run's
sends, which carry its unchanged context, write nothing. Payloads recorded before this codec
carry everything inline and pass through untouched. Forgetting a customer deletes their contexts
(keepflow/store/erasure.py), after their runs were ended; the closed runs' histories then hold
hashes of nothing.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from pydantic_core import to_json
from temporalio.api.common.v1 import Payload
from temporalio.converter import PayloadCodec

from keepflow.store import Database
from keepflow.store import payload_parts as store

JSON = b"json/plain"
REF = "$part"
# How a payload with a part taken out is told from one without: no metadata entry (in an unsealed
# history each would cost bytes in every payload), only this, which a Keepflow model never holds.
HOLDS_REF = b'{"' + REF.encode() + b'":'
# Top-level fields moved out: RunInput's snapshot and context, SendRequest's and DoRequest's context,
# and SendRequest's terms (the shop's rules, the same in every send of a sequence).
FIELDS = ("snapshot", "context", "terms")
_MAY_HOLD = re.compile(rb'"(?:snapshot|context|terms)":\s*\{')
# A reference as `encode` writes it: `"snapshot":{"$part":"<key>","root":"<id>"}`. Groups: the field,
# the key, the reference object, and the fields kept inline.
_REFERENCE = re.compile(rb'"(snapshot|context|terms)":(\{"\$part":"([A-Za-z0-9_-]+)"((?:,"[A-Za-z_]+":"[^"\\]*")*)\})')
# Smaller than this stays inline: a row costs more than the bytes it saves.
MIN_BYTES = 160
# 128 bits of sha256 name a part (base64url, 22 characters): no two different parts meet in a
# store's lifetime.
KEY_BYTES = 16
CACHE = 4096  # parts a process keeps in memory (a context is about 1-2 KB)


class PartMissing(ValueError):
    pass


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def key_of(body: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(body.encode()).digest()[:KEY_BYTES]).rstrip(b"=").decode()


# What each process knows is in the store, per database: a part written or read once is neither
# written nor read again. Shared by the codecs of one process and by `context_part` callers.
_KNOWN: dict[str, OrderedDict[str, str]] = {}


def _known(url: str) -> OrderedDict[str, str]:
    return _KNOWN.setdefault(url, OrderedDict())


def context_part(context: dict[str, Any]) -> tuple[str, str]:
    """The key and body a run input's `context` is stored under, so the router can write it in the
    transaction that claims the run's row (`known` once that commits) and the start writes nothing."""
    body = canonical(json.loads(to_json(context)))
    return key_of(body), body


def known(url: str, key: str, body: str) -> None:
    """Note a part committed to the store at `url` by other means than a codec."""
    _remember(_known(url), key, body)


def _remember(cache: OrderedDict[str, str], key: str, body: str) -> None:
    cache[key] = body
    cache.move_to_end(key)
    while len(cache) > CACHE:
        cache.popitem(last=False)


class PartsCodec(PayloadCodec):
    """Moves payloads' snapshots and contexts into `db` (a Database, or its URL, opened on first use)."""

    def __init__(self, db: Database | str) -> None:
        self._db = db
        self._cache = _known(db if isinstance(db, str) else db.url)

    @property
    def db(self) -> Database:
        if isinstance(self._db, str):
            # Opened only for the parts this process meets first: no pool kept open beside its own.
            self._db = Database(self._db, pooled=False)
        return self._db

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        out: list[Payload] = []
        new: dict[str, tuple[str, str | None]] = {}
        for payload in payloads:
            value = _object(payload)
            if value is None:
                out.append(payload)
                continue
            moved = False
            for field in FIELDS:
                part = value.get(field)
                if not isinstance(part, dict) or REF in part:
                    continue
                # A started run's snapshot differs from its starter's by `root` alone: keep that
                # inline, so the whole chain shares one row.
                kept = {"root": part["root"]} if field == "snapshot" and "root" in part else {}
                body = canonical({k: v for k, v in part.items() if k not in kept})
                if len(body) < MIN_BYTES:
                    continue
                key = key_of(body)
                if key not in self._cache:
                    new[key] = (body, _customer(field, part))
                value[field] = {REF: key, **kept}
                moved = True
            if not moved:
                out.append(payload)
                continue
            out.append(Payload(metadata=payload.metadata, data=json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()))
        if new:
            await asyncio.to_thread(self._put, new)
            for key, (body, _) in new.items():
                self._remember(key, body)
        return out

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        holding = [p.metadata.get("encoding") == JSON and HOLDS_REF in p.data for p in payloads]
        if not any(holding):
            return list(payloads)
        # Spliced back in as text where `encode` wrote the references (no parse, no dump of the
        # whole payload: a run's input is mostly its snapshot); parsed where it is written otherwise.
        found = [_references(p.data) if holds else None for p, holds in zip(payloads, holding)]
        opened = [json.loads(p.data) if holds and refs is None else None
                  for p, holds, refs in zip(payloads, holding, found)]
        wanted = {m[3].decode() for refs in found if refs for m in refs}
        wanted |= {part[REF] for value in opened if value is not None
                   for part in (value.get(f) for f in FIELDS) if isinstance(part, dict) and REF in part}
        missing = [key for key in wanted if key not in self._cache]
        if missing:
            for key, body in (await asyncio.to_thread(self._get, missing)).items():
                self._remember(key, body)
        out: list[Payload] = []
        for payload, refs, value in zip(payloads, found, opened):
            if refs:
                pieces: list[bytes] = []
                at = 0
                for ref in refs:
                    part = self._body(ref[3].decode(), ref[1].decode()).encode()
                    # The part's object with the fields kept inline (a snapshot's `root`) at its end.
                    pieces += [payload.data[at:ref.start(2)], part[:-1], ref[4], b"}"]
                    at = ref.end(2)
                pieces.append(payload.data[at:])
                out.append(Payload(metadata=payload.metadata, data=b"".join(pieces)))
                continue
            if value is None:
                out.append(payload)
                continue
            for field in FIELDS:
                part = value.get(field)
                if isinstance(part, dict) and REF in part:
                    value[field] = {**json.loads(self._body(part[REF], field)), **{k: v for k, v in part.items() if k != REF}}
            out.append(Payload(metadata=payload.metadata, data=json.dumps(value, ensure_ascii=False).encode()))
        return out

    def _body(self, key: str, field: str) -> str:
        body = self._cache.get(key)
        if body is None:
            raise PartMissing(f"payload part {key} ({field}) is not in the store: the customer was "
                              "forgotten, or this process reads another database than the one that wrote it")
        self._cache.move_to_end(key)
        return body

    def _remember(self, key: str, body: str) -> None:
        _remember(self._cache, key, body)

    def _put(self, new: dict[str, tuple[str, str | None]]) -> None:
        with self.db.transaction() as connection:
            store.put(connection, ((key, body, customer) for key, (body, customer) in new.items()))

    def _get(self, keys: list[str]) -> dict[str, str]:
        with self.db.transaction() as connection:
            return store.get(connection, keys)


def _references(data: bytes) -> list[re.Match[bytes]] | None:
    """Every reference in `data`, when each is written as `encode` writes them; else None.

    `encode` leaves alone any payload that already holds `{"$part":`, so in one it wrote, each
    occurrence is one of its top-level references."""
    refs = list(_REFERENCE.finditer(data))
    return refs if refs and len(refs) == data.count(HOLDS_REF) else None


def _object(payload: Payload) -> dict[str, Any] | None:
    """The payload's JSON object when it may hold a part, else None (without parsing it)."""
    if payload.metadata.get("encoding") != JSON or HOLDS_REF in payload.data or not _MAY_HOLD.search(payload.data):
        return None
    value = json.loads(payload.data)
    return value if isinstance(value, dict) else None


def _customer(field: str, part: dict[str, Any]) -> str | None:
    customer = part.get("customer") if field == "context" else None
    found = customer.get("id") if isinstance(customer, dict) else None
    return None if found is None else str(found)
