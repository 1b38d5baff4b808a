"""StorageManager's clients: one typed, tenant-bound client per registered domain.

1. Every domain in :data:`shared.domains.DOMAINS` has a client on ``StorageManager``
   (a class attribute annotation named as the domain), defined in
   ``shared/domains/<domain>/client.py``.
2. A generated client has exactly one method per public service method whose first
   parameter after ``self`` is ``tenant``: same name, same parameters without
   ``tenant`` (names, kinds, defaults, annotations as strings), same return
   annotation, a one-line docstring. A service method without its client method, a
   drifted one, or a client method whose service method is gone fails, naming it,
   and says to run ``scripts/gen_clients.py``.
3. Each client method hands every argument to the service parameter of the same
   name and the client's tenant to ``tenant``, and returns what the service returned.
4. On every backend: two managers for two tenants over the same stores cannot see
   or change each other's objects, threads, sessions, workflows or checkpoints, and
   what a client writes is what the service reads back for that tenant.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import sys
import typing
import uuid
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from shared.domains import DOMAINS, Domain
from shared.domains.checkpoints.models import TypedValue
from shared.domains.checkpoints.service import CheckpointService
from shared.domains.memory.client import MemoryClient
from shared.domains.memory.models import Order
from shared.domains.memory.service import MemoryService
from shared.domains.sessions.service import SessionService
from shared.domains.workflows.service import WorkflowService
from shared.errors import NotFound
from shared.manager import StorageManager
from shared.stores import Stores
from tests.services.conftest import stores  # noqa: F401  (the fixture: a Stores on each backend)

ROOT = Path(__file__).resolve().parents[2]
REGENERATE = "run `.venv/bin/python scripts/gen_clients.py` (then review the diff)"
DOMAIN_CASES = [pytest.param(domain, id=domain.name) for domain in DOMAINS]


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_clients", ROOT / "scripts" / "gen_clients.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


GENERATOR = _generator()
HAND_WRITTEN: dict[str, str] = GENERATOR.HAND_WRITTEN


def _client_class(domain: Domain) -> type:
    hints = typing.get_type_hints(StorageManager)
    assert domain.name in hints, (
        f"StorageManager has no client for domain {domain.name!r}: {REGENERATE} to write "
        f"shared/domains/{domain.name}/client.py, then add `{domain.name}: "
        f"{GENERATOR.client_class_name(domain)}` to StorageManager")
    client = hints[domain.name]
    assert inspect.isclass(client), f"StorageManager.{domain.name} is annotated {client!r}, not a client class"
    return client


def _public_functions(cls: type) -> dict[str, Callable[..., Any]]:
    return {name: member for name, member in inspect.getmembers(cls, inspect.isfunction) if not name.startswith("_")}


def _tenant_first(cls: type) -> dict[str, Callable[..., Any]]:
    """The service methods a client mirrors: public, ``tenant`` right after ``self``."""
    found = {}
    for name, function in _public_functions(cls).items():
        parameters = list(inspect.signature(function).parameters)
        if len(parameters) > 1 and parameters[1] == "tenant":
            found[name] = function
    return found


def _text(annotation: Any) -> str:
    return annotation if isinstance(annotation, str) else inspect.formatannotation(annotation)


def drift(service: type, client: type) -> list[str]:
    """What differs between a service's tenant-first methods and a client's methods (empty when none)."""
    problems = []
    mirrored = _tenant_first(service)
    offered = _public_functions(client)
    for name in sorted(mirrored.keys() - offered.keys()):
        problems.append(f"{client.__name__}.{name} is missing: {service.__name__}.{name} has no client method")
    for name in sorted(offered.keys() - mirrored.keys()):
        problems.append(f"{client.__name__}.{name} is stale: {service.__name__} has no tenant-first method {name}")
    for name in sorted(mirrored.keys() & offered.keys()):
        wanted = inspect.signature(mirrored[name])
        got = inspect.signature(offered[name])
        wanted_parameters = [(p.name, p.kind, p.default, _text(p.annotation))
                             for p in list(wanted.parameters.values())[2:]]
        got_parameters = [(p.name, p.kind, p.default, _text(p.annotation)) for p in list(got.parameters.values())[1:]]
        if wanted_parameters != got_parameters or _text(wanted.return_annotation) != _text(got.return_annotation):
            problems.append(f"{client.__name__}.{name}{got} has drifted from {service.__name__}.{name}{wanted}")
        doc = inspect.getdoc(offered[name]) or ""
        if not doc or "\n" in doc:
            problems.append(f"{client.__name__}.{name} needs a one-line docstring")
    return problems


# --------------------------------------------------------------------------- shape (no backend needed)


@pytest.mark.parametrize("domain", DOMAIN_CASES)
def test_every_domain_has_a_client_defined_in_its_own_package(domain: Domain):
    client = _client_class(domain)
    assert client.__module__ == f"shared.domains.{domain.name}.client", (
        f"StorageManager.{domain.name} is {client.__module__}.{client.__name__}; "
        f"clients live in shared/domains/{domain.name}/client.py")
    assert client.__name__ == GENERATOR.client_class_name(domain)


@pytest.mark.parametrize("domain", [d for d in DOMAIN_CASES if d.values[0].name not in HAND_WRITTEN])
def test_the_client_mirrors_every_tenant_first_service_method(domain: Domain):
    client = _client_class(domain)
    assert _tenant_first(domain.service), f"{domain.service.__name__} has no tenant-first method to mirror"
    problems = drift(domain.service, client)
    assert not problems, "\n".join([*problems, REGENERATE])


def test_hand_written_clients_are_named_with_their_reason():
    assert set(HAND_WRITTEN) <= {d.name for d in DOMAINS}
    assert all(reason for reason in HAND_WRITTEN.values())


def test_drift_names_a_missing_a_changed_and_a_stale_method():
    """The check itself: each kind of drift is reported, naming the method."""

    def get_thread(self, thread_id: int) -> MemoryClient:  # annotations changed
        """One thread."""

    def history(self, thread_id: str, *, last: int | None = None, before: int | str | None = None,
                after: int | str | None = None, limit: int = 10, continuation: str | None = None,
                order: Order | str = Order.asc) -> Any:  # default of limit changed, return changed
        """History."""

    def forget(self, thread_id: str) -> None:  # not a service method
        """Gone."""

    mirrored = {name: getattr(MemoryClient, name) for name in _tenant_first(MemoryService)
                if name not in ("add_message", "get_thread", "history")}
    broken = type("BrokenClient", (), {**mirrored, "get_thread": get_thread, "history": history, "forget": forget})
    problems = drift(MemoryService, broken)
    assert len(problems) == 4, problems
    assert any("BrokenClient.add_message is missing" in p for p in problems)
    assert any("BrokenClient.get_thread" in p and "drifted" in p for p in problems)
    assert any("BrokenClient.history" in p and "drifted" in p for p in problems)
    assert any("BrokenClient.forget is stale" in p for p in problems)
    assert drift(MemoryService, MemoryClient) == []


class _Recorder:
    """Stands in for a service: records each call and answers with a value of its own."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
        self.answer = object()

    def __getattr__(self, name: str) -> Callable[..., object]:
        def record(*args: Any, **kwargs: Any) -> object:
            self.calls.append((name, args, kwargs))
            return self.answer

        return record


@pytest.mark.parametrize("domain", [d for d in DOMAIN_CASES if d.values[0].name not in HAND_WRITTEN])
def test_each_client_method_forwards_every_argument_and_the_tenant(domain: Domain):
    client_class = _client_class(domain)
    for name, service_method in _tenant_first(domain.service).items():
        recorder = _Recorder()
        client = client_class(recorder, "tenant-x")
        args, kwargs, expected = [], {}, {}
        for parameter in list(inspect.signature(getattr(client_class, name)).parameters.values())[1:]:
            value = f"<{parameter.name}>"  # distinct per parameter, so a swap shows
            if parameter.kind in (parameter.POSITIONAL_ONLY, parameter.POSITIONAL_OR_KEYWORD):
                args.append(value)
            elif parameter.kind is parameter.KEYWORD_ONLY:
                kwargs[parameter.name] = value
            else:
                continue  # *args / **kwargs: none in the services today; bind() below still checks the rest
            expected[parameter.name] = value
        result = getattr(client, name)(*args, **kwargs)
        assert len(recorder.calls) == 1 and recorder.calls[0][0] == name, f"{name} called {recorder.calls}"
        _, called_args, called_kwargs = recorder.calls[0]
        bound = inspect.signature(service_method).bind(None, *called_args, **called_kwargs)
        assert bound.arguments == {"self": None, "tenant": "tenant-x", **expected}, name
        if inspect.signature(service_method).return_annotation != "None":
            assert result is recorder.answer, f"{client_class.__name__}.{name} does not return the service's answer"


def test_clients_are_importable_from_the_manager_and_the_package():
    import shared.manager
    from shared import StorageManager as exported
    from shared.manager import ObjectsClient, decode_value, encode_value

    assert exported is StorageManager
    assert ObjectsClient.__module__ == "shared.domains.objects.client"
    body, media = encode_value({"a": 1})
    assert decode_value(body, media) == {"a": 1}
    assert not hasattr(shared.manager, "TenantScoped")  # no untyped proxy left beside the clients


# --------------------------------------------------------------------------- behaviour on every backend


def _checkpoint(label: str) -> TypedValue:
    return TypedValue("json", json.dumps({"checkpoint": label}).encode())


def test_two_tenants_managers_on_the_same_stores_cannot_see_each_other(stores: Stores):  # noqa: F811
    first, second = "a" + uuid.uuid4().hex[:10], "b" + uuid.uuid4().hex[:10]
    mine, theirs = StorageManager(stores, first), StorageManager(stores, second)

    # objects
    mine.objects.save("notes/plan", {"step": 1})
    assert not theirs.objects.exists("notes/plan") and theirs.objects.list_keys("notes/") == []
    with pytest.raises(NotFound):
        theirs.objects.load("notes/plan")

    # memory: a thread id taken by one tenant is free, and invisible, for the other
    thread = mine.memory.create_thread("user-1", thread_id="th-1", title="mine")
    mine.memory.add_message(thread.thread_id, "user", "hello")
    with pytest.raises(NotFound):
        theirs.memory.get_thread("th-1")
    with pytest.raises(NotFound):
        theirs.memory.add_message("th-1", "user", "intruding")
    assert theirs.memory.list_threads("user-1").items == []
    theirs.memory.create_thread("user-1", thread_id="th-1", title="theirs")
    assert mine.memory.get_thread("th-1").title == "mine"
    assert [m.content for m in mine.memory.history("th-1").items] == ["hello"]
    assert theirs.memory.history("th-1").items == []

    # sessions
    session = mine.sessions.create("user-1", metadata={"who": "mine"})
    with pytest.raises(NotFound):
        theirs.sessions.get(session.session_id)
    with pytest.raises(NotFound):
        theirs.sessions.record(session.session_id)
    assert theirs.sessions.list_active("user-1").items == []
    assert mine.sessions.get(session.session_id).request_count == 0

    # workflows: another tenant's event wakes nothing of mine
    mine.workflows.suspend("wf-1", workflow_name="etl", resource="user-1", current_step=0, context_state={"a": 1},
                           reason={"kind": "event", "event_id": "go"})
    with pytest.raises(NotFound):
        theirs.workflows.get("wf-1")
    with pytest.raises(NotFound):
        theirs.workflows.resume("wf-1")
    assert theirs.workflows.list().items == []
    assert theirs.workflows.deliver_event("go", {"x": 1}) == 0
    untouched = mine.workflows.get("wf-1")
    assert untouched.status == "suspended" and not untouched.ready

    # checkpoints
    mine.checkpoints.put("th-1", "", "c1", _checkpoint("1"), channel_versions={"a": "1"},
                         new_values={"a": TypedValue("bytes", b"A")})
    with pytest.raises(NotFound):
        theirs.checkpoints.get("th-1")
    assert theirs.checkpoints.threads().items == []
    with pytest.raises(NotFound):
        theirs.checkpoints.delete_thread("th-1")
    assert mine.checkpoints.get("th-1").values == {"a": TypedValue("bytes", b"A")}


def test_a_client_call_reaches_the_service_for_the_managers_tenant(stores: Stores):  # noqa: F811
    tenant, other = "t" + uuid.uuid4().hex[:10], "o" + uuid.uuid4().hex[:10]
    storage = StorageManager(stores, tenant)

    thread = storage.memory.create_thread("user-1", title="via client", metadata={"k": "v"})
    memory = MemoryService(stores)
    assert memory.get_thread(tenant, thread.thread_id).title == "via client"
    with pytest.raises(NotFound):
        memory.get_thread(other, thread.thread_id)
    storage.memory.add_messages(thread.thread_id, [{"role": "user", "content": "one"},
                                                   {"role": "assistant", "content": "two"}])
    assert [m.content for m in memory.history(tenant, thread.thread_id).items] == ["one", "two"]
    page = storage.memory.history(thread.thread_id, order=Order.desc, limit=1)  # keyword arguments arrive too
    assert [m.content for m in page.items] == ["two"] and page.continuation

    session = storage.sessions.create("user-1")
    storage.sessions.record(session.session_id, requests=3, errors=1)
    stored = SessionService(stores).get(tenant, session.session_id)
    assert (stored.request_count, stored.error_count) == (3, 1)

    storage.workflows.suspend("wf-1", workflow_name="etl", resource="user-1", current_step="load",
                              context_state={"a": 1}, reason={"kind": "event", "event_id": "go"})
    assert WorkflowService(stores).deliver_event(tenant, "go", {"b": 2}) == 1
    assert storage.workflows.resume("wf-1").context_state == {"a": 1, "events": {"go": {"b": 2}}}

    storage.checkpoints.put("th-1", "", "c1", _checkpoint("1"))
    assert CheckpointService(stores).get(tenant, "th-1").checkpoint == _checkpoint("1")
