"""The payload codec (`loyalty.codec`) and its keys, without servers."""

from __future__ import annotations

import asyncio
import base64
import json
import stat
import subprocess
from pathlib import Path

import pytest
from temporalio.api.common.v1 import Payload
from temporalio.converter import DefaultFailureConverterWithEncodedAttributes

from loyalty.api.serve import serve_api
from loyalty.codec import (
    ENCODING,
    KEY_ID,
    EncryptionCodec,
    parse_keys,
    read_keyring,
    write_keyring,
)
from loyalty.errors import CodecError, ConfigurationError, UnknownCodecKey
from loyalty.settings import Settings
from loyalty.store.embedded import free_port, port_is_free
from loyalty.temporal import DATA_CONVERTER, data_converter
from tests.test_cli import LOYALTY, cli_env

MARKER = "codec-marker-7f3a"


def key_text(key_id: str, seed: bytes) -> str:
    return f"{key_id}:{base64.b64encode(seed * (32 // len(seed))).decode()}"


OLD = key_text("k1", b"\x01")
NEW = key_text("k2", b"\x02")


def plain(text: str = MARKER) -> Payload:
    return Payload(metadata={"encoding": b"json/plain"}, data=json.dumps({"note": text}).encode())


async def test_round_trip_hides_the_data_and_keeps_the_metadata() -> None:
    codec = EncryptionCodec(parse_keys(OLD))
    original = [plain(), plain("second")]
    encoded = await codec.encode(original)
    for payload in encoded:
        assert payload.metadata["encoding"] == ENCODING
        assert payload.metadata[KEY_ID] == b"k1"
        assert MARKER.encode() not in payload.SerializeToString()
        assert b"json/plain" not in payload.data
    # A fresh nonce per payload: the same value encrypts differently each time.
    again = await codec.encode(original)
    assert encoded[0].data != again[0].data
    assert await codec.decode(encoded) == original


async def test_a_new_key_first_still_decrypts_what_the_old_one_encrypted() -> None:
    old = await EncryptionCodec(parse_keys(OLD)).encode([plain()])
    rotated = EncryptionCodec(parse_keys(f"{NEW},{OLD}"))
    assert await rotated.decode(old) == [plain()]
    new = await rotated.encode([plain()])
    assert new[0].metadata[KEY_ID] == b"k2"
    # The old key alone cannot read what the new one wrote, and says which key it lacks.
    with pytest.raises(UnknownCodecKey, match="'k2'") as raised:
        await EncryptionCodec(parse_keys(OLD)).decode(new)
    assert raised.value.key_id == "k2"


async def test_tampered_or_truncated_ciphertext_is_refused() -> None:
    codec = EncryptionCodec(parse_keys(OLD))
    [encoded] = await codec.encode([plain()])
    flipped = bytearray(encoded.data)
    flipped[-1] ^= 1
    tampered = Payload(metadata=dict(encoded.metadata), data=bytes(flipped))
    with pytest.raises(CodecError, match="'k1' does not decrypt"):
        await codec.decode([tampered])
    # A key under the same id that is not the one that encrypted.
    other = EncryptionCodec(parse_keys(key_text("k1", b"\x03")))
    with pytest.raises(CodecError, match="does not decrypt"):
        await other.decode([encoded])
    short = Payload(metadata=dict(encoded.metadata), data=encoded.data[:10])
    with pytest.raises(CodecError, match="truncated"):
        await codec.decode([short])


async def test_payloads_that_are_not_encrypted_pass_through() -> None:
    codec = EncryptionCodec(parse_keys(OLD))
    untouched = [plain(), Payload(metadata={"encoding": b"binary/null"})]
    assert await codec.decode(untouched) == untouched


@pytest.mark.parametrize(
    ("keys", "problem"),
    [
        ("k1:not base64!", "LOYALTY_CODEC_KEYS: key 'k1' is not valid base64"),
        (f"k1:{base64.b64encode(b'x' * 16).decode()}", "key 'k1' is 16 bytes; AES-256 needs 32"),
        ("just-a-key", "LOYALTY_CODEC_KEYS: item 1 is not id:base64key"),
        (f"{OLD},{OLD}", "key id(s) given twice: k1"),
        (f"bad id:{OLD.split(':')[1]}", "key id 'bad id' must be"),
    ],
)
def test_bad_keys_are_a_configuration_error_naming_the_variable(keys: str, problem: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        Settings(LOYALTY_CODEC_KEYS=keys)  # type: ignore[call-arg]
    assert problem in str(raised.value)
    # Never the key material.
    secret = keys.partition(":")[2]
    assert not secret or secret.split(",")[0] not in str(raised.value)


def test_a_keyring_file_and_what_loyalty_dev_writes(tmp_path: Path) -> None:
    path = tmp_path / "home" / "codec-keyring.json"
    key_id = write_keyring(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    keyring = read_keyring(path)
    assert keyring.current == key_id
    assert key_id in repr(keyring)
    secret = json.loads(path.read_text())["keys"][0]["key"]
    assert secret not in repr(keyring)
    with pytest.raises(FileExistsError):
        write_keyring(path)

    # No key configured: the converter uses the home's keyring, found by `loyalty dev`'s
    # other shells too.
    settings = Settings(LOYALTY_HOME=tmp_path / "home")  # type: ignore[call-arg]
    converter = data_converter(settings)
    assert isinstance(converter.payload_codec, EncryptionCodec)
    assert converter.payload_codec.keyring.current == key_id
    assert isinstance(converter.failure_converter, DefaultFailureConverterWithEncodedAttributes)
    assert data_converter(Settings(LOYALTY_HOME=tmp_path / "none")) is DATA_CONVERTER  # type: ignore[call-arg]

    (tmp_path / "broken.json").write_text('{"keys": [{"id": "a"}]}')
    with pytest.raises(ConfigurationError, match=r"LOYALTY_CODEC_KEYRING \(.*broken.json\)"):
        Settings(LOYALTY_CODEC_KEYRING=tmp_path / "broken.json")  # type: ignore[call-arg]
    with pytest.raises(ConfigurationError, match="cannot read it"):
        Settings(LOYALTY_CODEC_KEYRING=tmp_path / "missing.json")  # type: ignore[call-arg]


def test_a_bad_key_on_the_command_line_is_one_line_and_exit_2(tmp_path: Path) -> None:
    env = cli_env({"LOYALTY_HOME": tmp_path, "LOYALTY_CODEC_KEYS": "k1:c2hvcnQ="})
    done = subprocess.run(
        [LOYALTY, "flows"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 2, done.stderr
    assert "LOYALTY_CODEC_KEYS: key 'k1' is 5 bytes" in done.stderr
    assert "c2hvcnQ=" not in done.stderr + done.stdout
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


async def test_the_api_refuses_a_broken_keyring_before_it_listens(tmp_path: Path) -> None:
    (tmp_path / "codec-keyring.json").write_text('{"keys": []}')
    port = free_port()
    settings = Settings(LOYALTY_HOME=tmp_path, LOYALTY_API_PORT=port)  # type: ignore[call-arg]
    with pytest.raises(ConfigurationError, match=r"the keyring of `loyalty dev`.*holds no key"):
        await serve_api(settings, "postgresql://nobody@127.0.0.1:1/none", None, asyncio.Event())
    assert port_is_free(port)
