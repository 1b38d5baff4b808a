"""Test-side adapters ("probes") that let one contract suite exercise every domain.

``tests/domains/test_contract.py`` runs the same checks on every domain of
:data:`shared.domains.DOMAINS`; a probe is what it needs to know about one domain,
written only against the domain's public service API:

* :meth:`Probe.populate` makes a tenant's sample items (at least two entries in
  each listing, so that a listing hands out a continuation token at ``limit=1``);
* :meth:`Probe.read` snapshots them (NotFound when the tenant cannot see them);
* :meth:`Probe.listings` pages through every listing that shows them;
* :meth:`Probe.intrusions` are the calls another tenant may try on them (each
  must be refused, with one of the exceptions it names, and change nothing);
* :meth:`Probe.foreign_ops` are queue payloads naming them, one for every queue op
  of the domain, sent by another tenant (an op that creates may create that
  tenant's own item with the same id, never touch the owner's);
* :meth:`Probe.prepare` builds, for each queue op of the domain, the state it
  needs and a valid :class:`OpSample` (a payload, another payload for the same op,
  and the observation of what the op changes);
* :attr:`Probe.jobs` says, per timer job, how to make due work and count what is left.

A domain joins the contract by being registered: the suite fails (it does not
skip) for a registered domain without a probe in :data:`PROBES`, for a queue op
without a sample and for a job without a :class:`JobProbe`.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from shared.errors import NotFound, PreconditionFailed


class NoSample(LookupError):
    """:meth:`Probe.prepare` has no sample for this queue op (the contract suite fails on it)."""


#: A page reader: ``listing(continuation, limit) -> Page``.
Listing = Callable[[str | None, int], Any]


def public(domain: str, name: str) -> Any:
    """A public name of a domain package, wherever the package keeps it (the service's module, models, package).

    The service module first: the name as the service itself uses it.
    """
    for module in (f"shared.domains.{domain}.service", f"shared.domains.{domain}.models", f"shared.domains.{domain}"):
        try:
            found = importlib.import_module(module)
        except ModuleNotFoundError:
            continue
        if hasattr(found, name):
            return getattr(found, name)
    raise AttributeError(f"shared.domains.{domain} has no public {name!r} (looked in service, models, the package)")


def plain(value: Any) -> Any:
    """A comparable snapshot of a service result: dataclasses, pages and enums as plain data."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if hasattr(value, "value") and type(value).__module__ != "builtins" and isinstance(value.value, str):
        return value.value
    return value


def absent_or(call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``call(*args, **kwargs)``'s snapshot, or ``"<absent>"`` when it raises NotFound."""
    try:
        return plain(call(*args, **kwargs))
    except NotFound:
        return "<absent>"


def drain(listing: Listing, limit: int = 100) -> list[Any]:
    """Every item of a listing, following continuation tokens."""
    items: list[Any] = []
    token: str | None = None
    for _ in range(100):
        page = listing(token, limit)
        items.extend(page.items)
        token = page.continuation
        if not token:
            return items
    raise AssertionError("listing did not end after 100 pages")


def all_pages(method: Callable[..., Any], *args: Any, **kwargs: Any) -> list[Any]:
    """Every item ``method(*args, limit=, continuation=, **kwargs)`` lists."""
    return drain(lambda c, n: method(*args, limit=n, continuation=c, **kwargs))


@dataclass(frozen=True)
class Intrusion:
    """A call another tenant makes on the owner's item; it must raise one of ``refused``.

    ``refused`` empty: the call may return (e.g. "0 delivered") or raise NotFound, as
    long as the owner's item stays unchanged.
    """

    call: Callable[[], Any]
    refused: tuple[type[BaseException], ...] = (NotFound,)


@dataclass(frozen=True)
class OpSample:
    """A valid payload for one queue op in the state :meth:`Probe.prepare` made, and what it changes.

    ``other``: a different request for the same op (other target or other body), used to
    check that an idempotency key reused for it is refused, and, under a key of its own,
    as a newer edit that a redelivery of ``payload`` must not revert. ``observe()``
    snapshots everything either payload could change.
    """

    payload: dict[str, Any]
    other: dict[str, Any]
    observe: Callable[[], Any]
    #: Deletes what ``payload`` made or changed, through the public API (None: the domain cannot).
    remove: Callable[[], Any] | None = None
    #: Another op of the domain on the same target, valid on its own after ``payload``: the same
    #: idempotency key used for it must be refused too (None: no such op).
    other_op: tuple[str, dict[str, Any]] | None = None


@dataclass(frozen=True)
class JobProbe:
    """How to exercise one timer job through the public API.

    ``method``: the service method the job runs (called with a one-item budget or
    ``limit=1`` to interrupt a run). ``make_due(service, stores, tenant, seed, n)``
    makes ``n`` items that the job will handle and returns the seconds to wait until
    they are due, or None when no public call can make due work for this job.
    ``pending(service, stores, tenant, seed)``: how many of them the job has not handled yet.
    ``snapshot(service, stores, tenant, seed)``: the state the job acts on.
    """

    method: str
    make_due: Callable[[Any, Any, str, str, int], float | None]
    pending: Callable[[Any, Any, str, str], int]
    snapshot: Callable[[Any, Any, str, str], Any]


@dataclass
class Probe:
    """What the contract suite needs to know about one domain (see the module docstring)."""

    domain: str
    jobs: dict[str, JobProbe] = field(default_factory=dict)

    def populate(self, service: Any, tenant: str, seed: str) -> dict[str, Any]:
        raise NotImplementedError

    def read(self, service: Any, tenant: str, ref: dict[str, Any]) -> Any:
        raise NotImplementedError

    def listings(self, service: Any, tenant: str, ref: dict[str, Any]) -> dict[str, Listing]:
        raise NotImplementedError

    def intrusions(self, service: Any, tenant: str, ref: dict[str, Any]) -> dict[str, Intrusion]:
        raise NotImplementedError

    def foreign_ops(self, ref: dict[str, Any]) -> dict[str, dict[str, Any]]:
        raise NotImplementedError

    def prepare(self, service: Any, tenant: str, seed: str, op: str) -> OpSample:
        """The state ``op`` needs, made for ``tenant``, and a sample for it; :class:`NoSample` for an unknown op."""
        raise NotImplementedError


# --------------------------------------------------------------------------- objects


class ObjectsProbe(Probe):
    def __init__(self) -> None:
        super().__init__("objects", jobs={"purge_expired_objects": JobProbe(
            "purge_expired", self._make_expired, self._unpurged, self._expired_snapshot)})

    def populate(self, service: Any, tenant: str, seed: str) -> dict[str, Any]:
        key = f"contract/{seed}/a"
        service.put(tenant, key, b"first", "text/plain")
        info = service.put(tenant, key, b"second", "text/plain")
        service.put(tenant, f"contract/{seed}/b", b"other", "text/plain")
        return {"prefix": f"contract/{seed}/", "key": key, "version": info.version_id}

    def read(self, service: Any, tenant: str, ref: dict[str, Any]) -> Any:
        stored = service.get(tenant, ref["key"])
        versions = drain(lambda c, n: service.versions(tenant, ref["key"], limit=n, continuation=c))
        return plain(stored), plain(versions)

    def listings(self, service: Any, tenant: str, ref: dict[str, Any]) -> dict[str, Listing]:
        return {
            "list": lambda c, n: service.list(tenant, ref["prefix"], limit=n, continuation=c),
            "versions": lambda c, n: service.versions(tenant, ref["key"], limit=n, continuation=c),
        }

    def intrusions(self, service: Any, tenant: str, ref: dict[str, Any]) -> dict[str, Intrusion]:
        key, version = ref["key"], ref["version"]
        return {
            "head": Intrusion(lambda: service.head(tenant, key)),
            "get version": Intrusion(lambda: service.get(tenant, key, version)),
            "put if-match": Intrusion(lambda: service.put(tenant, key, b"evil", if_match=version),
                                      (NotFound, PreconditionFailed)),
            "delete": Intrusion(lambda: service.delete(tenant, key)),
            "delete if-match": Intrusion(lambda: service.delete(tenant, key, if_match=version),
                                         (NotFound, PreconditionFailed)),
        }

    def foreign_ops(self, ref: dict[str, Any]) -> dict[str, dict[str, Any]]:
        return {
            "objects.put": {"key": ref["key"], "text": "evil", "if_match": ref["version"]},
            "objects.delete": {"key": ref["key"]},
        }

    def _state(self, service: Any, tenant: str, *keys: str) -> Any:
        return {key: (absent_or(service.get, tenant, key), absent_or(all_pages, service.versions, tenant, key))
                for key in keys}

    def prepare(self, service: Any, tenant: str, seed: str, op: str) -> OpSample:
        a, b = f"q/{seed}/a", f"q/{seed}/b"
        observe = lambda: self._state(service, tenant, a, b)
        if op == "objects.put":
            return OpSample({"key": a, "text": "one"}, {"key": a, "text": "two"}, observe,
                            lambda: service.delete(tenant, a), ("objects.delete", {"key": a}))
        if op == "objects.delete":
            service.put(tenant, a, b"a", "text/plain")
            service.put(tenant, b, b"b", "text/plain")
            return OpSample({"key": a}, {"key": b}, observe, other_op=("objects.put", {"key": a, "text": "again"}))
        raise NoSample(op)

    # -- purge_expired_objects

    @staticmethod
    def _past(stores: Any) -> Any | None:
        """The service with its clock an hour back (objects written with it expire "in the past")."""
        service_class = public("objects", "ObjectService")
        if "clock" not in inspect.signature(service_class).parameters:
            return None
        return service_class(stores, clock=lambda: time.time() - 3600)

    def _make_expired(self, service: Any, stores: Any, tenant: str, seed: str, n: int) -> float | None:
        past = self._past(stores)
        for i in range(n):
            if past is not None:
                past.put(tenant, f"ttl/{seed}/{i}", b"x", "text/plain", ttl_seconds=60)
            else:
                service.put(tenant, f"ttl/{seed}/{i}", b"x", "text/plain", ttl_seconds=1)
        return 0.0 if past is not None else math.ceil(time.time() + 1) + 0.05 - time.time()

    def _unpurged(self, service: Any, stores: Any, tenant: str, seed: str) -> int:
        past = self._past(stores)
        if past is None:
            return -1  # an expired object reads as absent at once: purging is not observable
        return sum(1 for _ in past.iter_keys(tenant, f"ttl/{seed}/"))

    def _expired_snapshot(self, service: Any, stores: Any, tenant: str, seed: str) -> Any:
        past = self._past(stores) or service
        return plain(drain(lambda c, n: past.list(tenant, f"ttl/{seed}/", limit=n, continuation=c)))


# --------------------------------------------------------------------------- memory


class MemoryProbe(Probe):
    def __init__(self) -> None:
        super().__init__("memory", jobs={"finish_thread_deletions": JobProbe(
            "finish_deletions", lambda *args: None, lambda *args: 0, lambda *args: None)})

    def populate(self, service: Any, tenant: str, seed: str) -> dict[str, Any]:
        resource, thread = f"r{seed}", f"t{seed}a"
        service.create_thread(tenant, resource, thread_id=thread, title="mine")
        messages = service.add_messages(tenant, thread, [{"role": "user", "content": "one"},
                                                         {"role": "assistant", "content": "two"}])
        service.create_thread(tenant, resource, thread_id=f"t{seed}b")
        return {"resource": resource, "thread": thread, "message": messages[0].message_id}

    def read(self, service: Any, tenant: str, ref: dict[str, Any]) -> Any:
        thread = service.get_thread(tenant, ref["thread"])
        history = drain(lambda c, n: service.history(tenant, ref["thread"], limit=n, continuation=c))
        return plain(thread), plain(history)

    def listings(self, service: Any, tenant: str, ref: dict[str, Any]) -> dict[str, Listing]:
        return {
            "list_threads": lambda c, n: service.list_threads(tenant, ref["resource"], limit=n, continuation=c),
            "history": lambda c, n: service.history(tenant, ref["thread"], limit=n, continuation=c),
        }

    def intrusions(self, service: Any, tenant: str, ref: dict[str, Any]) -> dict[str, Intrusion]:
        thread, message = ref["thread"], ref["message"]
        return {
            "get_message": Intrusion(lambda: service.get_message(tenant, thread, message)),
            "update_thread": Intrusion(lambda: service.update_thread(tenant, thread, title="evil")),
            "add_messages": Intrusion(lambda: service.add_messages(tenant, thread, [{"role": "user", "content": "evil"}])),
            "update_message": Intrusion(lambda: service.update_message(tenant, thread, message, content="evil")),
            "delete_message": Intrusion(lambda: service.delete_message(tenant, thread, message)),
            "delete_thread": Intrusion(lambda: service.delete_thread(tenant, thread)),
        }

    def foreign_ops(self, ref: dict[str, Any]) -> dict[str, dict[str, Any]]:
        thread, message = ref["thread"], ref["message"]
        return {
            "memory.create_thread": {"resource": ref["resource"], "thread_id": thread, "title": "evil"},
            "memory.update_thread": {"thread_id": thread, "title": "evil"},
            "memory.add_messages": {"thread_id": thread, "messages": [{"role": "user", "content": "evil"}]},
            "memory.update_message": {"thread_id": thread, "message_id": message, "content": "evil"},
            "memory.delete_message": {"thread_id": thread, "message_id": message},
            "memory.delete_thread": {"thread_id": thread},
        }

    def _state(self, service: Any, tenant: str, *threads: str) -> Any:
        return {thread: (absent_or(service.get_thread, tenant, thread),
                         absent_or(all_pages, service.history, tenant, thread))
                for thread in threads}

    def prepare(self, service: Any, tenant: str, seed: str, op: str) -> OpSample:
        resource, a, b = f"r{seed}", f"q{seed}a", f"q{seed}b"
        observe = lambda: self._state(service, tenant, a, b)
        remove = lambda: service.delete_thread(tenant, a)
        if op == "memory.create_thread":
            return OpSample({"resource": resource, "thread_id": a, "title": "one"},
                            {"resource": resource, "thread_id": a, "title": "two"}, observe, remove,
                            ("memory.update_thread", {"thread_id": a, "title": "other op"}))
        service.create_thread(tenant, resource, thread_id=a)
        if op == "memory.update_thread":
            return OpSample({"thread_id": a, "title": "one"}, {"thread_id": a, "title": "two"}, observe, remove,
                            ("memory.add_messages", {"thread_id": a, "messages": [{"role": "user", "content": "x"}]}))
        if op == "memory.delete_thread":
            service.create_thread(tenant, resource, thread_id=b)
            return OpSample({"thread_id": a}, {"thread_id": b}, observe,
                            other_op=("memory.create_thread", {"resource": resource, "thread_id": a}))
        if op == "memory.add_messages":
            return OpSample({"thread_id": a, "messages": [{"role": "user", "content": "one"}]},
                            {"thread_id": a, "messages": [{"role": "user", "content": "two"}]}, observe, remove,
                            ("memory.update_thread", {"thread_id": a, "title": "other op"}))
        first, second = service.add_messages(tenant, a, [{"role": "user", "content": "m1"},
                                                         {"role": "user", "content": "m2"}])
        if op == "memory.update_message":
            return OpSample({"thread_id": a, "message_id": first.message_id, "content": "one"},
                            {"thread_id": a, "message_id": first.message_id, "content": "two"}, observe, remove,
                            ("memory.delete_message", {"thread_id": a, "message_id": first.message_id}))
        if op == "memory.delete_message":
            return OpSample({"thread_id": a, "message_id": first.message_id},
                            {"thread_id": a, "message_id": second.message_id}, observe,
                            other_op=("memory.update_message",
                                      {"thread_id": a, "message_id": second.message_id, "content": "x"}))
        raise NoSample(op)


# --------------------------------------------------------------------------- sessions


class SessionsProbe(Probe):
    def __init__(self) -> None:
        super().__init__("sessions", jobs={"expire_idle_sessions": JobProbe(
            "expire_idle", self._make_idle, self._still_active, self._idle_snapshot)})

    def populate(self, service: Any, tenant: str, seed: str) -> dict[str, Any]:
        user, session = f"u{seed}", f"s{seed}a"
        service.create(tenant, user, session_id=session, metadata={"mine": True})
        service.put_context(tenant, session, {"step": 1})
        service.create(tenant, user, session_id=f"s{seed}b")
        return {"user": user, "session": session}

    def read(self, service: Any, tenant: str, ref: dict[str, Any]) -> Any:
        return plain(service.get(tenant, ref["session"])), plain(service.get_context(tenant, ref["session"]))

    def listings(self, service: Any, tenant: str, ref: dict[str, Any]) -> dict[str, Listing]:
        return {"list_active": lambda c, n: service.list_active(tenant, ref["user"], limit=n, continuation=c)}

    def intrusions(self, service: Any, tenant: str, ref: dict[str, Any]) -> dict[str, Intrusion]:
        session = ref["session"]
        return {
            "get_context": Intrusion(lambda: service.get_context(tenant, session)),
            "record": Intrusion(lambda: service.record(tenant, session, requests=5)),
            "update_metadata": Intrusion(lambda: service.update_metadata(tenant, session, {"evil": True})),
            "put_context": Intrusion(lambda: service.put_context(tenant, session, {"evil": True})),
            "end": Intrusion(lambda: service.end(tenant, session)),
        }

    def foreign_ops(self, ref: dict[str, Any]) -> dict[str, dict[str, Any]]:
        session = ref["session"]
        return {
            "sessions.create": {"session_id": session, "user_id": ref["user"], "metadata": {"evil": True}},
            "sessions.record": {"session_id": session, "requests": 5},
            "sessions.update_metadata": {"session_id": session, "metadata": {"evil": True}},
            "sessions.put_context": {"session_id": session, "context": {"evil": True}},
            "sessions.end": {"session_id": session},
        }

    def _state(self, service: Any, tenant: str, *sessions: str) -> Any:
        return {session: (absent_or(service.get, tenant, session), absent_or(service.get_context, tenant, session))
                for session in sessions}

    def prepare(self, service: Any, tenant: str, seed: str, op: str) -> OpSample:
        user, a = f"u{seed}", f"q{seed}a"
        observe = lambda: self._state(service, tenant, a)
        if op == "sessions.create":
            return OpSample({"session_id": a, "user_id": user, "metadata": {"v": 1}},
                            {"session_id": a, "user_id": user, "metadata": {"v": 2}}, observe,
                            other_op=("sessions.record", {"session_id": a, "requests": 1}))
        service.create(tenant, user, session_id=a)
        if op == "sessions.record":
            return OpSample({"session_id": a, "requests": 1}, {"session_id": a, "requests": 2}, observe,
                            other_op=("sessions.update_metadata", {"session_id": a, "metadata": {"x": 1}}))
        if op == "sessions.update_metadata":
            return OpSample({"session_id": a, "metadata": {"v": 1}}, {"session_id": a, "metadata": {"v": 2}}, observe,
                            other_op=("sessions.record", {"session_id": a, "requests": 1}))
        if op == "sessions.end":
            return OpSample({"session_id": a, "reason": "one"}, {"session_id": a, "reason": "two"}, observe)
        if op == "sessions.put_context":
            return OpSample({"session_id": a, "context": {"v": 1}}, {"session_id": a, "context": {"v": 2}}, observe,
                            other_op=("sessions.record", {"session_id": a, "requests": 1}))
        raise NoSample(op)

    # -- expire_idle_sessions

    @staticmethod
    def _ids(seed: str, n: int = 3) -> list[str]:
        return [f"idle{seed}{i}" for i in range(n)]

    def _make_idle(self, service: Any, stores: Any, tenant: str, seed: str, n: int) -> float | None:
        long_ago = time.time() - service.idle_seconds - 120
        for session in self._ids(seed, n):
            service.create(tenant, f"u{seed}", session_id=session, now=long_ago)
        return 0.0

    def _still_active(self, service: Any, stores: Any, tenant: str, seed: str) -> int:
        return sum(1 for s in self._ids(seed) if plain(service.get(tenant, s).status) == "active")

    def _idle_snapshot(self, service: Any, stores: Any, tenant: str, seed: str) -> Any:
        return [plain(service.get(tenant, s)) for s in self._ids(seed)]


# --------------------------------------------------------------------------- workflows


class WorkflowsProbe(Probe):
    def __init__(self) -> None:
        super().__init__("workflows", jobs={"process_due_workflows": JobProbe(
            "process_due", self._make_timeouts, self._still_waiting, self._wait_snapshot)})

    @staticmethod
    def _suspend(service: Any, tenant: str, workflow: str, seed: str, reason: dict[str, Any],
                 context: dict[str, Any] | None = None) -> Any:
        return service.suspend(tenant, workflow, workflow_name="contract", resource=f"r{seed}", current_step=0,
                               context_state=context or {"mine": True}, reason=reason)

    def populate(self, service: Any, tenant: str, seed: str) -> dict[str, Any]:
        workflow, event = f"w{seed}a", f"e{seed}"
        self._suspend(service, tenant, workflow, seed, {"kind": "event", "event_id": event})
        self._suspend(service, tenant, f"w{seed}b", seed, {"kind": "approval"})
        return {"workflow": workflow, "event": event, "resource": f"r{seed}", "approval": f"w{seed}b"}

    def read(self, service: Any, tenant: str, ref: dict[str, Any]) -> Any:
        return (plain(service.get(tenant, ref["workflow"], include_context=True)),
                plain(service.get(tenant, ref["approval"], include_context=True)))

    def listings(self, service: Any, tenant: str, ref: dict[str, Any]) -> dict[str, Listing]:
        return {
            "list": lambda c, n: service.list(tenant, limit=n, continuation=c),
            "list by resource": lambda c, n: service.list(tenant, resource=ref["resource"], limit=n, continuation=c),
            "list by name": lambda c, n: service.list(tenant, workflow_name="contract", limit=n, continuation=c),
            "list suspended": lambda c, n: service.list(tenant, status="suspended", limit=n, continuation=c),
        }

    def intrusions(self, service: Any, tenant: str, ref: dict[str, Any]) -> dict[str, Intrusion]:
        workflow, approval = ref["workflow"], ref["approval"]
        return {
            "resume": Intrusion(lambda: service.resume(tenant, workflow)),
            "cancel": Intrusion(lambda: service.cancel(tenant, workflow)),
            "transition": Intrusion(lambda: service.transition(tenant, workflow, "cancelled")),
            "approve": Intrusion(lambda: service.approve(tenant, approval)),
            "deliver_event": Intrusion(lambda: service.deliver_event(tenant, ref["event"], {"evil": True}), ()),
        }

    def foreign_ops(self, ref: dict[str, Any]) -> dict[str, dict[str, Any]]:
        workflow = ref["workflow"]
        return {
            "workflows.suspend": {"workflow_id": workflow, "workflow_name": "contract", "resource": ref["resource"],
                                  "current_step": 0, "context_state": {"evil": True},
                                  "suspend_reason": {"kind": "manual"}},
            "workflows.deliver_event": {"event_id": ref["event"], "payload": {"evil": True}},
            "workflows.approve": {"workflow_id": ref["approval"]},
            "workflows.complete": {"workflow_id": workflow},
            "workflows.fail": {"workflow_id": workflow},
            "workflows.cancel": {"workflow_id": workflow},
        }

    def _state(self, service: Any, tenant: str, *workflows: str) -> Any:
        return {w: absent_or(service.get, tenant, w, include_context=True) for w in workflows}

    def prepare(self, service: Any, tenant: str, seed: str, op: str) -> OpSample:
        a, event = f"q{seed}a", f"qe{seed}"
        observe = lambda: self._state(service, tenant, a)
        base = {"workflow_id": a, "workflow_name": "contract", "resource": f"r{seed}", "current_step": 0,
                "suspend_reason": {"kind": "event", "event_id": event}}
        if op == "workflows.suspend":
            return OpSample({**base, "context_state": {"v": 1}}, {**base, "context_state": {"v": 2}}, observe,
                            other_op=("workflows.cancel", {"workflow_id": a}))
        if op == "workflows.deliver_event":
            self._suspend(service, tenant, a, seed, {"kind": "event", "event_id": event})
            return OpSample({"event_id": event, "payload": {"v": 1}}, {"event_id": event, "payload": {"v": 2}}, observe)
        if op == "workflows.approve":
            self._suspend(service, tenant, a, seed, {"kind": "approval"})
            return OpSample({"workflow_id": a, "approved_by": "one"}, {"workflow_id": a, "approved_by": "two"}, observe,
                            other_op=("workflows.cancel", {"workflow_id": a}))
        if op in ("workflows.complete", "workflows.fail", "workflows.cancel"):
            self._suspend(service, tenant, a, seed, {"kind": "manual"})
            service.resume(tenant, a)
            return OpSample({"workflow_id": a, "detail": "one"}, {"workflow_id": a, "detail": "two"}, observe)
        raise NoSample(op)

    # -- process_due_workflows

    @staticmethod
    def _ids(seed: str, n: int = 3) -> list[str]:
        return [f"due{seed}{i}" for i in range(n)]

    def _make_timeouts(self, service: Any, stores: Any, tenant: str, seed: str, n: int) -> float | None:
        for workflow in self._ids(seed, n):
            self._suspend(service, tenant, workflow, seed,
                          {"kind": "event", "event_id": f"never{seed}", "timeout_seconds": 1})
        # Due one second after the last suspension, at whole-second resolution.
        return math.ceil(time.time() + 1) + 0.05 - time.time()

    def _still_waiting(self, service: Any, stores: Any, tenant: str, seed: str) -> int:
        return sum(1 for w in self._ids(seed) if plain(service.get(tenant, w).status) == "suspended")

    def _wait_snapshot(self, service: Any, stores: Any, tenant: str, seed: str) -> Any:
        return [plain(service.get(tenant, w, include_context=True)) for w in self._ids(seed)]


# --------------------------------------------------------------------------- checkpoints


class CheckpointsProbe(Probe):
    def __init__(self) -> None:
        super().__init__("checkpoints")

    @staticmethod
    def _put(service: Any, tenant: str, thread: str, checkpoint_id: str, run: str, parent: str | None = None) -> Any:
        typed_value = public("checkpoints", "TypedValue")
        return service.put(tenant, thread, "", checkpoint_id, typed_value("json", b'{"v": 1}'),
                           channel_versions={"messages": "1"}, new_values={"messages": typed_value("json", b"[]")},
                           metadata={"run_id": run}, parent_checkpoint_id=parent)

    def _thread(self, service: Any, tenant: str, thread: str, run: str, count: int = 2) -> None:
        parent = None
        for i in range(count):
            checkpoint_id = f"cp{i:04d}"
            self._put(service, tenant, thread, checkpoint_id, run, parent)
            parent = checkpoint_id

    def populate(self, service: Any, tenant: str, seed: str) -> dict[str, Any]:
        thread = f"t{seed}a"
        self._thread(service, tenant, thread, f"run{seed}")
        self._thread(service, tenant, f"t{seed}b", f"run{seed}b", 1)
        return {"thread": thread, "run": f"run{seed}"}

    def read(self, service: Any, tenant: str, ref: dict[str, Any]) -> Any:
        history = drain(lambda c, n: service.list(tenant, ref["thread"], limit=n, continuation=c))
        return plain(service.get(tenant, ref["thread"])), plain(history)

    def listings(self, service: Any, tenant: str, ref: dict[str, Any]) -> dict[str, Listing]:
        return {
            "threads": lambda c, n: service.threads(tenant, limit=n, continuation=c),
            "list": lambda c, n: service.list(tenant, ref["thread"], limit=n, continuation=c),
        }

    def intrusions(self, service: Any, tenant: str, ref: dict[str, Any]) -> dict[str, Intrusion]:
        thread = ref["thread"]
        return {
            "get cp0000": Intrusion(lambda: service.get(tenant, thread, "", "cp0000")),
            "delete_thread": Intrusion(lambda: service.delete_thread(tenant, thread)),
            "copy_thread": Intrusion(lambda: service.copy_thread(tenant, thread, f"{thread}copy")),
            # Naturally idempotent maintenance: "nothing of yours" may be NotFound or a count of 0.
            "prune": Intrusion(lambda: service.prune(tenant, [thread], "delete"), ()),
            "delete_for_runs": Intrusion(lambda: service.delete_for_runs(tenant, [ref["run"]]), ()),
        }

    def foreign_ops(self, ref: dict[str, Any]) -> dict[str, dict[str, Any]]:
        thread = ref["thread"]
        return {
            "checkpoints.delete_thread": {"thread_id": thread},
            "checkpoints.delete_runs": {"run_ids": [ref["run"]]},
            "checkpoints.copy_thread": {"source_thread_id": thread, "target_thread_id": f"{thread}copy"},
            "checkpoints.prune": {"thread_ids": [thread], "strategy": "delete"},
        }

    def _state(self, service: Any, tenant: str, *threads: str) -> Any:
        return {t: absent_or(all_pages, service.list, tenant, t) for t in threads}

    def prepare(self, service: Any, tenant: str, seed: str, op: str) -> OpSample:
        a, b, c = f"q{seed}a", f"q{seed}b", f"q{seed}c"
        observe = lambda: self._state(service, tenant, a, b)
        self._thread(service, tenant, a, f"qrun{seed}a")
        self._thread(service, tenant, b, f"qrun{seed}b")
        if op == "checkpoints.delete_thread":
            return OpSample({"thread_id": a}, {"thread_id": b}, observe,
                            other_op=("checkpoints.prune", {"thread_ids": [b], "strategy": "delete"}))
        if op == "checkpoints.delete_runs":
            return OpSample({"run_ids": [f"qrun{seed}a"]}, {"run_ids": [f"qrun{seed}b"]}, observe,
                            other_op=("checkpoints.delete_thread", {"thread_id": b}))
        if op == "checkpoints.copy_thread":
            return OpSample({"source_thread_id": a, "target_thread_id": c},
                            {"source_thread_id": b, "target_thread_id": c}, lambda: self._state(service, tenant, c),
                            lambda: service.delete_thread(tenant, c), ("checkpoints.delete_thread", {"thread_id": c}))
        if op == "checkpoints.prune":
            return OpSample({"thread_ids": [a], "strategy": "keep_latest"},
                            {"thread_ids": [b], "strategy": "keep_latest"}, observe,
                            lambda: service.delete_thread(tenant, a), ("checkpoints.delete_thread", {"thread_id": a}))
        raise NoSample(op)


# --------------------------------------------------------------------------- audit


class AuditProbe(Probe):
    """Audit entries are made by the sequencer from change records; the probe records events of its own
    (``AuditService.record``) and sequences them, so it needs no other domain's wiring."""

    def __init__(self) -> None:
        super().__init__("audit", jobs={"sequence_changes": JobProbe(
            "sequence_changes", self._make_records, self._unaudited, self._entries_snapshot)})

    @staticmethod
    def _record(service: Any, tenant: str, target: str, audited: bool = True) -> None:
        service.record(tenant, "contract", "touch", "item", target, details={"target": target}, audited=audited)

    def populate(self, service: Any, tenant: str, seed: str) -> dict[str, Any]:
        for name in ("a", "b"):
            self._record(service, tenant, f"{seed}{name}")
        self._record(service, tenant, f"{seed}quiet", audited=False)
        service.sequence_changes(tenant)
        return {"first": 1, "second": 2}

    def read(self, service: Any, tenant: str, ref: dict[str, Any]) -> Any:
        entries = drain(lambda c, n: service.entries(tenant, limit=n, continuation=c))
        return service.checkpoint(tenant), plain(entries), plain(service.entry(tenant, ref["first"]))

    def listings(self, service: Any, tenant: str, ref: dict[str, Any]) -> dict[str, Listing]:
        return {
            "entries": lambda c, n: service.entries(tenant, limit=n, continuation=c),
            "entries by category": lambda c, n: service.entries(tenant, category="data_access", limit=n,
                                                                continuation=c),
            "changes": lambda c, n: service.changes(tenant, limit=n, continuation=c),
        }

    def intrusions(self, service: Any, tenant: str, ref: dict[str, Any]) -> dict[str, Intrusion]:
        first = ref["first"]
        return {
            "entry": Intrusion(lambda: service.entry(tenant, first)),
            "checkpoint": Intrusion(lambda: service.checkpoint(tenant)),
            "consistency": Intrusion(lambda: service.consistency(tenant, 1, 2)),
            "erase_details": Intrusion(lambda: service.erase_details(tenant, first)),
        }

    def foreign_ops(self, ref: dict[str, Any]) -> dict[str, dict[str, Any]]:
        return {}

    def prepare(self, service: Any, tenant: str, seed: str, op: str) -> OpSample:
        raise NoSample(op)

    # -- sequence_changes

    @staticmethod
    def _targets(seed: str, n: int = 3) -> list[str]:
        return [f"due{seed}{i}" for i in range(n)]

    def _make_records(self, service: Any, stores: Any, tenant: str, seed: str, n: int) -> float | None:
        for target in self._targets(seed, n):
            self._record(service, tenant, target)
        return 0.0

    def _unaudited(self, service: Any, stores: Any, tenant: str, seed: str) -> int:
        audited = {entry.target["id"] for entry in drain(lambda c, n: service.entries(tenant, limit=n, continuation=c))}
        return sum(1 for target in self._targets(seed) if target not in audited)

    def _entries_snapshot(self, service: Any, stores: Any, tenant: str, seed: str) -> Any:
        entries = drain(lambda c, n: service.entries(tenant, limit=n, continuation=c))
        return plain(entries), plain(service.changes(tenant, limit=1000).items)


#: One probe per registered domain, by domain name. A domain missing here fails the contract suite.
PROBES: dict[str, Probe] = {probe.domain: probe for probe in (
    ObjectsProbe(), MemoryProbe(), SessionsProbe(), WorkflowsProbe(), CheckpointsProbe(), AuditProbe())}
