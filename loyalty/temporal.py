"""The Temporal client, with the one data converter used by worker, starter and tests."""

from __future__ import annotations

import asyncio
import dataclasses
import re

from temporalio.client import Client
from temporalio.common import SearchAttributeKey
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import DataConverter, DefaultFailureConverterWithEncodedAttributes
from temporalio.service import RPCError, RPCStatusCode, TLSConfig

from loyalty.codec import HOME_KEYRING, EncryptionCodec, Keyring, parse_keys, read_keyring
from loyalty.errors import ConfigurationError, ServiceUnavailable
from loyalty.metrics.tracing import tracing_interceptors
from loyalty.settings import Settings

# The converter without encryption: for test servers and clients that read no payloads.
DATA_CONVERTER: DataConverter = pydantic_data_converter
# Seconds to reach the frontend before Temporal counts as unavailable.
CONNECT_TIMEOUT = 10.0
# Statuses that mean "not now": the server is down, overloaded or did not answer in time.
UNAVAILABLE_STATUSES = frozenset(
    {
        RPCStatusCode.UNAVAILABLE,
        RPCStatusCode.DEADLINE_EXCEEDED,
        RPCStatusCode.RESOURCE_EXHAUSTED,
        RPCStatusCode.CANCELLED,
    }
)
# Statuses that mean the settings are wrong: credentials, TLS, namespace.
REFUSED_STATUSES = frozenset(
    {RPCStatusCode.UNAUTHENTICATED, RPCStatusCode.PERMISSION_DENIED, RPCStatusCode.NOT_FOUND}
)

MEMBER_ID = SearchAttributeKey.for_keyword("LoyaltyMemberId")
FLOW = SearchAttributeKey.for_keyword("LoyaltyFlow")
PROGRAM = SearchAttributeKey.for_keyword("LoyaltyProgram")
TRIGGER = SearchAttributeKey.for_keyword("LoyaltyTrigger")
SEARCH_ATTRIBUTES = (MEMBER_ID, FLOW, PROGRAM, TRIGGER)


def keyring(settings: Settings) -> Keyring | None:
    """The configured codec keys: ``LOYALTY_CODEC_KEYS``, else ``LOYALTY_CODEC_KEYRING``,
    else the keyring `loyalty dev` wrote under ``LOYALTY_HOME``; None if there is none.

    Raises:
        ConfigurationError: the keys or the keyring file are unusable (naming the
            variable or the file, never a key).
    """
    if settings.codec_keys is not None:
        return parse_keys(settings.codec_keys.get_secret_value())
    if settings.codec_keyring is not None:
        return read_keyring(settings.codec_keyring)
    home = settings.home / HOME_KEYRING
    if home.is_file():
        return read_keyring(home, "the keyring of `loyalty dev`")
    return None


def data_converter(settings: Settings) -> DataConverter:
    """The one data converter: pydantic's, and with a keyring configured, the encryption
    codec (`loyalty.codec`) with failure messages and stack traces encrypted too.

    Raises:
        ConfigurationError: the keys are unusable.
    """
    keys = keyring(settings)
    if keys is None:
        return DATA_CONVERTER
    return dataclasses.replace(
        DATA_CONVERTER,
        payload_codec=EncryptionCodec(keys),
        failure_converter_class=DefaultFailureConverterWithEncodedAttributes,
    )


def tls_config(settings: Settings) -> TLSConfig | bool:
    """TLS from the settings: client certificate files, a CA, or plain TLS for API keys."""
    cert = settings.temporal_tls_client_cert_path
    key = settings.temporal_tls_client_key_path
    ca = settings.temporal_tls_server_ca_cert_path
    if cert or key or ca or settings.temporal_tls_server_name:
        return TLSConfig(
            client_cert=cert.read_bytes() if cert else None,
            client_private_key=key.read_bytes() if key else None,
            server_root_ca_cert=ca.read_bytes() if ca else None,
            domain=settings.temporal_tls_server_name,
        )
    # Temporal Cloud with an API key always uses TLS.
    return settings.temporal_tls or settings.temporal_api_key is not None


def _reason(exc: BaseException) -> str:
    """The useful part of a connection error (the Rust core nests the OS's message)."""
    if isinstance(exc, TimeoutError):
        return f"no answer within {CONNECT_TIMEOUT:g} s"
    text = exc.message if isinstance(exc, RPCError) else str(exc)
    nested: list[str] = re.findall(r'(?:message|error): "([^"]+)"', text)
    if nested:
        return nested[-1][:1].lower() + nested[-1][1:]
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]


def unavailable(address: str, exc: BaseException) -> ServiceUnavailable:
    """`ServiceUnavailable` for Temporal at the address, with the error's reason."""
    return ServiceUnavailable(
        "Temporal", f"Temporal at {address} is unavailable: {_reason(exc)}; try again"
    )


async def connect_temporal(settings: Settings, address: str | None = None) -> Client:
    """Connect to Temporal with the project's data converter and credentials.

    Raises:
        ServiceUnavailable: the frontend does not answer (down, unreachable, too slow).
        ConfigurationError: it refuses the credentials or the namespace; the codec keys
            are unusable.
    """
    target = address or settings.effective_temporal_address
    converter = data_converter(settings)
    api_key = settings.temporal_api_key
    tls = tls_config(settings)
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT):
            return await Client.connect(
                target,
                namespace=settings.temporal_namespace,
                data_converter=converter,
                api_key=api_key.get_secret_value() if api_key else None,
                tls=tls,
                # A worker on this client traces too: the interceptor is for both.
                interceptors=tracing_interceptors(settings),
            )
    except RPCError as exc:
        if exc.status in REFUSED_STATUSES:
            raise ConfigurationError(
                f"Temporal at {target} refuses the connection (namespace "
                f"{settings.temporal_namespace!r}, credentials): {_reason(exc)}"
            ) from None
        raise unavailable(target, exc) from None
    except (RuntimeError, OSError) as exc:
        # The core reports a failed connection as a RuntimeError ("Failed client connect").
        raise unavailable(target, exc) from None
