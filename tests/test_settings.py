"""Settings: read from the environment once; Temporal credentials reach the client."""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio.service import TLSConfig

from loyalty.settings import Settings
from loyalty.temporal import tls_config


def test_defaults_use_embedded_servers(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("LOYALTY_DATABASE_URL", "TEMPORAL_ADDRESS", "LOYALTY_HOME", "TEMPORAL_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings()
    assert settings.database_url is None
    assert settings.effective_temporal_address == "localhost:7233"
    assert settings.home == Path(".loyalty")
    assert tls_config(settings) is False


def test_secrets_are_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOYALTY_DATABASE_URL", "postgresql://app:hunter2@db/loyalty")
    monkeypatch.setenv("TEMPORAL_API_KEY", "key-hunter2")
    settings = Settings()
    assert "hunter2" not in repr(settings)
    assert "hunter2" not in str(settings.model_dump())
    # An API key (Temporal Cloud) implies TLS.
    assert tls_config(settings) is True


def test_tls_files_are_read_into_the_client_config(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name, content in (("cert", b"CERT"), ("key", b"KEY"), ("ca", b"CA")):
        (tmp_path / name).write_bytes(content)
    monkeypatch.setenv("TEMPORAL_TLS_CLIENT_CERT_PATH", str(tmp_path / "cert"))
    monkeypatch.setenv("TEMPORAL_TLS_CLIENT_KEY_PATH", str(tmp_path / "key"))
    monkeypatch.setenv("TEMPORAL_TLS_SERVER_CA_CERT_PATH", str(tmp_path / "ca"))
    monkeypatch.setenv("TEMPORAL_TLS_SERVER_NAME", "temporal.internal")
    config = tls_config(Settings())
    assert isinstance(config, TLSConfig)
    assert (config.client_cert, config.client_private_key, config.server_root_ca_cert) == (
        b"CERT",
        b"KEY",
        b"CA",
    )
    assert config.domain == "temporal.internal"


def test_invalid_setting_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOYALTY_ROUTER_PARTITIONS", "0")
    with pytest.raises(ValueError, match="LOYALTY_ROUTER_PARTITIONS"):
        Settings()
