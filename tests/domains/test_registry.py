"""The registry is the one list: names, queue ops, routers, timers and the app context all follow it."""

from __future__ import annotations

import json
import re

import azure.functions as func

from functions.context import AppContext
from functions.http_api import create_api, router_of
from shared import names
from shared.commands import DOMAIN_OF_OP, OPS
from shared.config import Settings
from shared.domains import DOMAINS, domain


def test_names_declares_exactly_the_registry_tables_plus_the_platform_ones():
    registered = [table for entry in DOMAINS for table in entry.tables]
    assert len(registered) == len(set(registered)), "two domains claim one table"
    assert sorted(names.TABLES) == sorted([*names.PLATFORM_TABLES, *registered])


def test_every_queue_op_belongs_to_its_domain_by_name():
    assert set(OPS) == {op.name for entry in DOMAINS for op in entry.commands}
    for op_name, domain_name in DOMAIN_OF_OP.items():
        assert op_name.startswith(domain_name + "."), op_name


def test_every_domain_router_is_mounted_and_owns_its_paths():
    app = create_api(AppContext(Settings()))
    mounted = set(app.openapi()["paths"])
    for entry in DOMAINS:
        router = router_of(entry)
        assert router.routes, f"{entry.name} has an empty router"
        for route in router.routes:
            if getattr(route, "include_in_schema", True):
                assert re.sub(r":\w+}", "}", route.path) in mounted  # converters are not in the document
            segment = route.path.removeprefix("/api/v1/").split("/")[0]
            assert segment in entry.paths, f"{route.path} is not under {entry.name}'s paths {entry.paths}"


def test_timers_are_generated_from_the_jobs(tmp_path):
    from functions import timers

    context = AppContext(Settings(data_dir=tmp_path))
    app = func.FunctionApp()
    app.register_functions(timers.blueprint(context))
    declared = {}
    for function in app.get_functions():
        binding = json.loads(function.get_function_json())["bindings"][0]
        declared[function.get_function_name()] = binding["schedule"]
    from shared.platform_jobs import PLATFORM_JOBS

    jobs = [*(job for entry in DOMAINS for job in entry.jobs), *PLATFORM_JOBS]
    assert len({job.name for job in jobs}) == len(jobs), "two jobs share a function name"
    assert declared == {job.name: job.schedule for job in jobs}
    context.close()


def test_the_app_context_hands_out_one_service_per_domain(tmp_path):
    context = AppContext(Settings(data_dir=tmp_path))
    for entry in DOMAINS:
        service = context.service(entry.name)
        assert service is getattr(context, entry.name) is context.service(entry.name)
        assert type(service) is entry.service
    assert domain("objects") is DOMAINS[0]
    context.close()
