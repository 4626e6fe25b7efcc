"""Encryption of Temporal payloads: AES-256-GCM keys with ids, and the payload codec.

Everything a workflow or an activity receives or returns (trigger events with their
attributes, member views, message data, memos) is stored in Temporal's history for the
namespace's retention. With a keyring configured, the one data converter
(`loyalty.temporal.data_converter`) encrypts each payload before it leaves the process,
so the server stores ciphertext only.

An encrypted payload has the metadata ``encoding: binary/encrypted`` and
``encryption-key-id: <id>``; its data is a 12-byte random nonce followed by the
AES-GCM ciphertext (with its tag) of the whole original payload, metadata included.

Keys rotate without downtime: the first key of the keyring encrypts, every key decrypts.
Add a new key first everywhere, keep the old ones until no history still needs them
(the namespace's retention). A payload that is not encrypted is decoded unchanged, so
histories written before encryption was switched on stay readable.

Key material comes from ``LOYALTY_CODEC_KEYS`` (``id:base64key`` separated by commas)
or a JSON file named by ``LOYALTY_CODEC_KEYRING`` (``{"keys": [{"id": ..., "key":
...}]}``); `loyalty dev` writes one under its home. Nothing here prints or logs a key.
This module imports nothing of the engine but its errors: the settings validate keys
with it.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import secrets
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from temporalio.api.common.v1 import Payload
from temporalio.converter import PayloadCodec

from loyalty.errors import CodecError, ConfigurationError, UnknownCodecKey

ENCODING = b"binary/encrypted"
KEY_ID = "encryption-key-id"
KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
# A key id goes into every payload's metadata and into error messages: short, plain.
_KEY_ID_SHAPE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
KEYS_VARIABLE = "LOYALTY_CODEC_KEYS"
KEYRING_VARIABLE = "LOYALTY_CODEC_KEYRING"
# The keyring `loyalty dev` writes under LOYALTY_HOME when no key is configured.
HOME_KEYRING = "codec-keyring.json"


class CodecKey(NamedTuple):
    """One key of a keyring: its id and its 32 bytes (never printed)."""

    id: str
    secret: bytes

    def __repr__(self) -> str:
        return f"CodecKey(id={self.id!r})"


class Keyring:
    """Keys by id; the first one encrypts.

    Raises:
        ConfigurationError: no key, or the same id twice.
    """

    def __init__(self, keys: Sequence[CodecKey], source: str = "the keyring") -> None:
        if not keys:
            raise ConfigurationError(f"{source}: holds no key")
        ids = [k.id for k in keys]
        twice = sorted({i for i in ids if ids.count(i) > 1})
        if twice:
            raise ConfigurationError(f"{source}: key id(s) given twice: {', '.join(twice)}")
        self.current = keys[0].id
        self.ids = tuple(ids)
        self._ciphers = {k.id: AESGCM(k.secret) for k in keys}

    def __repr__(self) -> str:
        return f"Keyring(ids={self.ids!r})"

    def cipher(self, key_id: str) -> AESGCM:
        """The cipher of ``key_id``.

        Raises:
            UnknownCodecKey: the keyring does not hold it.
        """
        found = self._ciphers.get(key_id)
        if found is None:
            raise UnknownCodecKey(key_id)
        return found


def _key(key_id: str, text: str, where: str) -> CodecKey:
    """A key from its id and base64 text; the problem names ``where``, never the text."""
    if not _KEY_ID_SHAPE.match(key_id):
        raise ConfigurationError(
            f"{where}: key id {key_id[:64]!r} must be 1 to 64 letters, digits, '.', '_' or '-'"
        )
    try:
        secret = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigurationError(f"{where}: key {key_id!r} is not valid base64") from None
    if len(secret) != KEY_BYTES:
        raise ConfigurationError(
            f"{where}: key {key_id!r} is {len(secret)} bytes; AES-256 needs {KEY_BYTES} "
            f"({KEY_BYTES} random bytes in base64: 44 characters)"
        )
    return CodecKey(key_id, secret)


def parse_keys(text: str) -> Keyring:
    """The keyring of ``LOYALTY_CODEC_KEYS``: ``id:base64key`` items separated by commas,
    the first encrypting.

    Raises:
        ConfigurationError: an item without id, bad base64, a wrong length; the message
            names the variable and the key id, never the key.
    """
    keys = []
    for n, item in enumerate(part.strip() for part in text.split(",")):
        key_id, sep, secret = item.partition(":")
        if not sep:
            raise ConfigurationError(
                f"{KEYS_VARIABLE}: item {n + 1} is not id:base64key (comma-separated)"
            )
        keys.append(_key(key_id.strip(), secret, KEYS_VARIABLE))
    return Keyring(keys, KEYS_VARIABLE)


def read_keyring(path: Path, variable: str = KEYRING_VARIABLE) -> Keyring:
    """The keyring in the JSON file ``path``: ``{"keys": [{"id": ..., "key": ...}]}``.

    Raises:
        ConfigurationError: the file cannot be read or has not that shape; the message
            names the variable and the file, never a key.
    """
    where = f"{variable} ({path})"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigurationError(f"{where}: cannot read it: {exc.strerror}") from None
    except ValueError:
        raise ConfigurationError(f"{where}: is not JSON") from None
    items = data.get("keys") if isinstance(data, dict) else None
    if not isinstance(items, list) or not all(
        isinstance(i, dict) and isinstance(i.get("id"), str) and isinstance(i.get("key"), str)
        for i in items
    ):
        raise ConfigurationError(f'{where}: expected {{"keys": [{{"id": ..., "key": ...}}]}}')
    return Keyring([_key(i["id"], i["key"], where) for i in items], where)


def write_keyring(path: Path) -> str:
    """Write a new keyring of one random key to ``path`` (mode 0600); the key's id.

    Raises:
        FileExistsError: the file exists (it is never overwritten).
    """
    key_id = f"dev-{datetime.now(UTC):%Y%m%d}-{secrets.token_hex(3)}"
    secret = base64.b64encode(AESGCM.generate_key(bit_length=256)).decode()
    text = json.dumps({"keys": [{"id": key_id, "key": secret}]}, indent=2) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
    return key_id


class EncryptionCodec(PayloadCodec):
    """AES-256-GCM with the keyring's current key; decodes with any of its keys."""

    def __init__(self, keyring: Keyring) -> None:
        self.keyring = keyring

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return self.encode_sync(payloads)

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return self.decode_sync(payloads)

    def encode_sync(self, payloads: Sequence[Payload]) -> list[Payload]:
        """The payloads encrypted with the current key (AES-GCM of microseconds each: no
        thread is worth it)."""
        key_id = self.keyring.current
        cipher = self.keyring.cipher(key_id)
        encoded = []
        for payload in payloads:
            nonce = os.urandom(NONCE_BYTES)
            data = nonce + cipher.encrypt(nonce, payload.SerializeToString(), None)
            encoded.append(
                Payload(metadata={"encoding": ENCODING, KEY_ID: key_id.encode()}, data=data)
            )
        return encoded

    def decode_sync(self, payloads: Sequence[Payload]) -> list[Payload]:
        """The payloads decrypted; a payload that is not encrypted is returned as it is.

        Raises:
            UnknownCodecKey: a payload names a key the keyring does not hold.
            CodecError: a payload's ciphertext does not decrypt with its key.
        """
        decoded = []
        for payload in payloads:
            if payload.metadata.get("encoding") != ENCODING:
                decoded.append(payload)
                continue
            key_id = payload.metadata.get(KEY_ID, b"").decode("utf-8", "replace")
            cipher = self.keyring.cipher(key_id)
            if len(payload.data) < NONCE_BYTES + TAG_BYTES:
                raise CodecError(f"a payload encrypted with codec key {key_id!r} is truncated")
            nonce, ciphertext = payload.data[:NONCE_BYTES], payload.data[NONCE_BYTES:]
            try:
                plain = cipher.decrypt(nonce, ciphertext, None)
            except InvalidTag:
                raise CodecError(
                    f"a payload encrypted with codec key {key_id!r} does not decrypt: its "
                    "ciphertext was altered, or the key under that id is not the one "
                    "that encrypted it"
                ) from None
            original = Payload()
            original.ParseFromString(plain)
            decoded.append(original)
        return decoded
