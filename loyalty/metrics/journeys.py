"""Counts journeys started and failed by flow, from inside their workflows.

A worker interceptor: it sees each journey's first run and its end. Nothing is counted
while a workflow replays its history (after an eviction from the worker's cache), so a
journey counts once, on the worker that first ran it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from temporalio import workflow
from temporalio.exceptions import FailureError
from temporalio.worker import (
    ExecuteWorkflowInput,
    Interceptor,
    WorkflowInboundInterceptor,
    WorkflowInterceptorClassInput,
)

from loyalty.metrics.counters import JOURNEYS_FAILED, JOURNEYS_STARTED


class JourneyMetrics(Interceptor):
    """The worker interceptor; ``flows`` maps each journey's workflow type to its flow."""

    def __init__(self, flows: Mapping[str, str]) -> None:
        self.flows = dict(flows)

    def workflow_interceptor_class(
        self, input: WorkflowInterceptorClassInput
    ) -> type[WorkflowInboundInterceptor] | None:
        flows = self.flows

        class _Counting(WorkflowInboundInterceptor):
            async def execute_workflow(self, input: ExecuteWorkflowInput) -> Any:
                flow = flows.get(workflow.info().workflow_type)
                if flow is None:
                    return await super().execute_workflow(input)
                if not workflow.unsafe.is_replaying():
                    JOURNEYS_STARTED.labels(flow).inc()
                try:
                    return await super().execute_workflow(input)
                except FailureError:
                    if not workflow.unsafe.is_replaying():
                        JOURNEYS_FAILED.labels(flow).inc()
                    raise

        return _Counting
