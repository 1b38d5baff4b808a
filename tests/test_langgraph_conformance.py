"""LangGraph's official saver conformance suite (PyPI langgraph-checkpoint-conformance).

The direct saver runs it on local, Azurite and moto; the remote saver runs it over
HTTP against `stowage serve` on each of the three backends. Every base and
extended capability must be detected and pass; nothing is skipped.
"""

from __future__ import annotations

import asyncio
import uuid

from langgraph.checkpoint.conformance import checkpointer_test, validate
from langgraph.checkpoint.conformance.capabilities import ALL_CAPABILITIES, BASE_CAPABILITIES, EXTENDED_CAPABILITIES
from langgraph.checkpoint.conformance.report import CapabilityReport

from shared.domains.checkpoints.service import CheckpointService
from shared.langgraph_savers import RemoteCheckpointSaver, StowageCheckpointSaver
from shared.stores import Stores


def assert_full_conformance(report: CapabilityReport) -> None:
    report.print_report()
    assert set(report.results) == {cap.value for cap in ALL_CAPABILITIES}
    failures = {name: result.failures for name, result in report.results.items() if result.failures}
    assert report.passed_all_base(), failures
    for capability in BASE_CAPABILITIES | EXTENDED_CAPABILITIES:
        result = report.results[capability.value]
        assert result.detected, f"{capability.value} is not implemented"
        assert result.passed is True and result.tests_skipped == 0, (capability.value, result.failures)
        assert result.tests_passed > 0
    assert report.passed_all() and report.conformance_level() == "FULL"


def test_direct_saver_passes_every_capability(settings):
    stores = Stores.from_settings(settings)
    stores.ensure()
    service = CheckpointService(stores)
    tenant = "conf" + uuid.uuid4().hex[:8]

    @checkpointer_test(name=f"StowageCheckpointSaver[{settings.backend}]")
    async def direct_saver():
        yield StowageCheckpointSaver(service, tenant)

    try:
        assert_full_conformance(asyncio.run(validate(direct_saver)))
    finally:
        stores.close()


def test_remote_saver_passes_every_capability(server):
    @checkpointer_test(name=f"RemoteCheckpointSaver[{server.backend}]")
    async def remote_saver():
        saver = RemoteCheckpointSaver(server.url, server.keys["alpha"])
        try:
            yield saver
        finally:
            await saver.aclose()

    assert_full_conformance(asyncio.run(validate(remote_saver)))
