"""OpenTelemetry tracing of Temporal calls (`temporalio.contrib.opentelemetry`): off by
default, on when the standard variables ask for it.

On when ``OTEL_TRACES_EXPORTER`` names an exporter (``otlp`` or ``console``), or when
it is unset and ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``…_TRACES_ENDPOINT``) is set;
``OTEL_SDK_DISABLED=true`` or ``OTEL_TRACES_EXPORTER=none`` keep it off. The OTLP
exporter reads its other ``OTEL_EXPORTER_OTLP_*`` variables itself. It needs the
``tracing`` extra (``pip install 'loyalty-flows[tracing]'``).
"""

from __future__ import annotations

from typing import Any

from loyalty.errors import ConfigurationError
from loyalty.settings import Settings

_installed: list[Any] = []


def tracing_enabled(settings: Settings) -> bool:
    """Whether the ``OTEL_*`` settings ask for traces."""
    if settings.otel_sdk_disabled:
        return False
    exporter = (settings.otel_traces_exporter or "").strip().lower()
    if exporter:
        return exporter != "none"
    return bool(settings.otel_exporter_otlp_endpoint or settings.otel_exporter_otlp_traces_endpoint)


def tracing_interceptors(settings: Settings) -> list[Any]:
    """The Temporal interceptors that trace, for clients and workers: none when tracing
    is off. The process's tracer provider is set up at the first call.

    Raises:
        ConfigurationError: tracing is asked for but the ``tracing`` extra is missing,
            or the exporter is not one this engine knows.
    """
    if not tracing_enabled(settings):
        return []
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
        from temporalio.contrib.opentelemetry import TracingInterceptor
    except ImportError as exc:
        raise ConfigurationError(
            f"tracing is on (OTEL_TRACES_EXPORTER, OTEL_EXPORTER_OTLP_ENDPOINT) but {exc.name} "
            "is not installed: pip install 'loyalty-flows[tracing]'"
        ) from None
    if not _installed:
        kinds = [k.strip().lower() for k in (settings.otel_traces_exporter or "otlp").split(",")]
        provider = TracerProvider(
            resource=Resource.create({"service.name": settings.otel_service_name})
        )
        for kind in kinds:
            provider.add_span_processor(BatchSpanProcessor(_exporter(kind, ConsoleSpanExporter)))
        trace.set_tracer_provider(provider)
        _installed.append(provider)
    return [TracingInterceptor()]


def _exporter(kind: str, console: Any) -> Any:
    if kind == "console":
        return console()
    if kind == "otlp":
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError:
            raise ConfigurationError(
                "OTEL_TRACES_EXPORTER=otlp needs opentelemetry-exporter-otlp-proto-http: "
                "pip install 'loyalty-flows[tracing]'"
            ) from None
        return OTLPSpanExporter()
    raise ConfigurationError(
        f"OTEL_TRACES_EXPORTER: {kind!r} is not an exporter this engine knows (otlp, console)"
    )
