"""The Temporal client, with the one data converter used by worker, starter and tests."""

from __future__ import annotations

from temporalio.client import Client
from temporalio.common import SearchAttributeKey
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import DataConverter
from temporalio.service import TLSConfig

from loyalty.settings import Settings

DATA_CONVERTER: DataConverter = pydantic_data_converter

MEMBER_ID = SearchAttributeKey.for_keyword("LoyaltyMemberId")
FLOW = SearchAttributeKey.for_keyword("LoyaltyFlow")
PROGRAM = SearchAttributeKey.for_keyword("LoyaltyProgram")
TRIGGER = SearchAttributeKey.for_keyword("LoyaltyTrigger")
SEARCH_ATTRIBUTES = (MEMBER_ID, FLOW, PROGRAM, TRIGGER)


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


async def connect_temporal(settings: Settings, address: str | None = None) -> Client:
    """Connect to Temporal with the project's data converter and credentials."""
    api_key = settings.temporal_api_key
    return await Client.connect(
        address or settings.effective_temporal_address,
        namespace=settings.temporal_namespace,
        data_converter=DATA_CONVERTER,
        api_key=api_key.get_secret_value() if api_key else None,
        tls=tls_config(settings),
    )
