"""The domain contract: what every registered domain guarantees, on every backend.

Parametrised over :data:`shared.domains.DOMAINS` and the three backends, through
the domains' public service APIs and the queue (:class:`shared.commands.CommandProcessor`):

1. tenant isolation: another tenant can neither see nor change a tenant's items,
   through the service or through queue ops naming them;
2. every queue op applied twice under one idempotency key: "applied", then
   "duplicate", and the state changed once; a redelivery after a newer request
   does not revert it, and one after the target was deleted brings nothing back
   and is no 500;
3. an idempotency key reused with another request of the op (or for another op
   on the same target) is refused (poisoned with a reason naming the key, or a
   409/422 error) and changes nothing;
4. continuation tokens: another tenant's token, a tampered token and garbage are
   refused with InvalidInput (400) by every listing;
5. timer jobs: a run stopped by its budget resumes on the next run, and a run on
   state already handled handles nothing and changes nothing.

What the suite knows of each domain is in ``tests/domains/probes.py``. A registered
domain without a probe, a queue op without a sample payload and a job without a
job probe fail here, so every new domain joins the contract by being registered.

The stores are built once per backend for this module (tenants are unique per
test): one ``ensure()`` per backend instead of one per test.
"""

from __future__ import annotations

import inspect
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from shared.command_ops import Outcome
from shared.commands import CommandProcessor
from shared.config import BACKENDS
from shared.domains import DOMAINS, Domain, Job
from shared.errors import InvalidInput, NotFound, StowageError
from shared.storage.due import Budget
from shared.storage.idempotency import IdempotencyKeyReused
from shared.stores import Stores
from tests.domains.app_stores import app_stores
from tests.domains.probes import PROBES, NoSample, OpSample, Probe, drain

OP_CASES = [pytest.param(domain, op.name, id=op.name) for domain in DOMAINS for op in domain.commands]
JOB_CASES = [pytest.param(domain, job, id=f"{domain.name}.{job.name}") for domain in DOMAINS for job in domain.jobs]
DOMAIN_CASES = [pytest.param(domain, id=domain.name) for domain in DOMAINS]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module", params=BACKENDS, ids=list(BACKENDS))
def contract_stores(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stores]:
    """Every app resource on one backend, shared by this module's tests of that backend."""
    yield from app_stores(request, tmp_path_factory, "contract")


class Harness:
    """One test's view: the domain's service, a processor sharing it, and fresh tenants."""

    def __init__(self, stores: Stores, domain: Domain) -> None:
        self.stores = stores
        self.domain = domain
        self.probe = probe_of(domain)
        self.service = domain.service(stores)
        services: dict[str, Any] = {domain.name: self.service}

        def service_of(name: str) -> Any:
            if name not in services:
                services[name] = next(d for d in DOMAINS if d.name == name).service(stores)
            return services[name]

        self.processor = CommandProcessor(stores, service_of)
        tag = uuid.uuid4().hex[:10]
        self.seed = tag[:8]
        self.tenant_a, self.tenant_b = f"ca{tag}", f"cb{tag}"

    def send(self, op: str, tenant: str, key: str, payload: dict[str, Any]) -> Outcome:
        """Apply one queue command as the queue trigger would (passing failures raise)."""
        return self.processor.process(json.dumps({"version": 1, "op": op, "tenant": tenant,
                                                  "idempotency_key": key, "payload": payload}))

    def attempt(self, op: str, tenant: str, key: str, payload: dict[str, Any]) -> Outcome:
        """:meth:`send`, with a passing failure as the outcome ``raised`` (for the host to retry)."""
        try:
            return self.send(op, tenant, key, payload)
        except StowageError as exc:
            return Outcome("raised", f"{type(exc).__name__} ({exc.status}): {exc}")


def probe_of(domain: Domain) -> Probe:
    probe = PROBES.get(domain.name)
    if probe is None:
        pytest.fail(f"domain {domain.name!r} is registered but has no probe in tests/domains/probes.py (PROBES): "
                    "write one so the domain contract covers it", pytrace=False)
    return probe


def sample(h: Harness, op: str) -> OpSample:
    try:
        return h.probe.prepare(h.service, h.tenant_a, h.seed, op)
    except NoSample:
        pytest.fail(f"queue op {op!r} has no sample payload in {type(h.probe).__name__}.prepare "
                    "(tests/domains/probes.py)", pytrace=False)


def handled(result: Any) -> int:
    """How much a job run did: its count, or the sum of its counts."""
    if isinstance(result, dict):
        return sum(int(v) for v in result.values())
    return int(result or 0)


# --------------------------------------------------------------------------- registry coverage


def test_every_registered_domain_has_a_probe_and_every_probe_a_domain():
    registered = {d.name for d in DOMAINS}
    assert registered <= set(PROBES), f"domains without a probe: {sorted(registered - set(PROBES))}"
    assert set(PROBES) <= registered, f"probes of unregistered domains: {sorted(set(PROBES) - registered)}"


@pytest.mark.parametrize("domain", DOMAIN_CASES)
def test_every_job_has_a_job_probe(domain: Domain):
    probe = probe_of(domain)
    missing = [job.name for job in domain.jobs if job.name not in probe.jobs]
    assert not missing, f"{domain.name} jobs without a JobProbe in tests/domains/probes.py: {missing}"
    stale = set(probe.jobs) - {job.name for job in domain.jobs}
    assert not stale, f"job probes for jobs {domain.name} no longer has: {sorted(stale)}"


# --------------------------------------------------------------------------- 1. tenant isolation


@pytest.mark.parametrize("domain", DOMAIN_CASES)
def test_another_tenant_sees_and_changes_nothing(contract_stores: Stores, domain: Domain):
    h = Harness(contract_stores, domain)
    probe, service, a, b = h.probe, h.service, h.tenant_a, h.tenant_b
    ref = probe.populate(service, a, h.seed)
    before = probe.read(service, a, ref)
    listed_before = {name: drain(listing) for name, listing in probe.listings(service, a, ref).items()}
    problems: list[str] = []

    with pytest.raises(NotFound):
        probe.read(service, b, ref)
    for name, listing in probe.listings(service, b, ref).items():
        try:
            page = listing(None, 100)
        except NotFound:
            continue
        if page.items:
            problems.append(f"listing {name} as the other tenant shows {page.items!r}")
    for name, intrusion in probe.intrusions(service, b, ref).items():
        allowed = intrusion.refused or (NotFound,)  # none named: may also return, changing nothing
        try:
            result = intrusion.call()
        except allowed:
            continue
        except StowageError as exc:
            problems.append(f"{name} as the other tenant raised {type(exc).__name__}: {exc} "
                            f"(expected one of {[e.__name__ for e in intrusion.refused]})")
            continue
        if intrusion.refused:
            problems.append(f"{name} as the other tenant succeeded: {result!r}")
    assert probe.read(service, a, ref) == before, "the owner's item changed after the other tenant's calls"

    foreign = probe.foreign_ops(ref)
    registered_ops = {op.name for op in domain.commands}
    assert set(foreign) == registered_ops, (
        f"{type(probe).__name__}.foreign_ops must name every queue op of {domain.name}: "
        f"missing {sorted(registered_ops - set(foreign))}, unknown {sorted(set(foreign) - registered_ops)}")
    outcomes = {}
    for op, payload in foreign.items():
        try:
            outcomes[op] = h.send(op, b, f"foreign-{op}", payload).status
        except StowageError as exc:
            outcomes[op] = f"raised {type(exc).__name__}"  # retried by the host, then poisoned
        if probe.read(service, a, ref) != before:
            problems.append(f"queue op {op} sent by the other tenant changed the owner's item ({outcomes[op]})")
            before = probe.read(service, a, ref)
    try:  # a create op may have made the other tenant an item of the same id: its own, not the owner's
        if probe.read(service, b, ref) == before:
            problems.append("the other tenant reads the owner's item after its queue ops")
    except NotFound:
        pass
    listed_after = {name: drain(listing) for name, listing in probe.listings(service, a, ref).items()}
    if listed_after != listed_before:
        problems.append("the owner's listings changed after the other tenant's calls")
    assert not problems, "\n".join(problems)


# --------------------------------------------------------------------------- 2 and 3. replays and reused keys


@pytest.mark.parametrize(("domain", "op"), OP_CASES)
def test_every_queue_op_applies_once_per_idempotency_key(contract_stores: Stores, domain: Domain, op: str):
    """2. A redelivery is a "duplicate" that changes nothing, also after a newer request
    and after the target was deleted; 3. the key reused for another request of the op
    (and, where the probe names one, for another op on the same target) is refused
    (poisoned naming the key, or 409/422) and changes nothing.

    One test per op for both, so each op's state is prepared once; each problem is
    reported with its check's label: 2 and 3 as the brief has them, 2b (after a newer
    request), 2c (after deletion) and 3b (other op) for the issue's further rules.
    """
    h = Harness(contract_stores, domain)
    s = sample(h, op)
    key = f"k-{h.seed}"
    before = s.observe()
    first = h.send(op, h.tenant_a, key, s.payload)
    assert first.status == "applied", f"first delivery of {op}: {first}"
    applied = s.observe()
    assert applied != before, f"{op} was applied but changed nothing the probe observes"
    problems: list[str] = []

    second = h.attempt(op, h.tenant_a, key, s.payload)
    if second.status != "duplicate":
        problems.append(f"[2 replay] the redelivery of {op} answered {second} (expected duplicate)")
    replayed = s.observe()
    if replayed != applied:
        problems.append(f"[2 replay] the redelivery of {op} changed the state again")

    reuses = [(op, s.other, "another request", "3 reused key")]
    if s.other_op is not None:
        reuses.append((s.other_op[0], s.other_op[1], f"another op ({s.other_op[0]})", "3b reused key, other op"))
    for reuse_op, reuse_payload, what, label in reuses:
        try:
            reused = h.send(reuse_op, h.tenant_a, key, reuse_payload)
        except IdempotencyKeyReused:
            pass
        except StowageError as exc:
            if exc.status not in (409, 422):
                problems.append(f"[{label}] the key of {op} reused for {what} raised "
                                f"{type(exc).__name__} ({exc.status}): {exc} (expected 409/422)")
        else:
            if reused.status != "poisoned" or "idempotency key" not in reused.detail.lower():
                problems.append(f"[{label}] the key of {op} reused for {what} answered {reused} "
                                "(expected poisoned, with a reason naming the idempotency key)")
        now = s.observe()
        if now != replayed:
            problems.append(f"[{label}] the key of {op} reused for {what} changed the state")
            replayed = now  # the later checks start from here

    # A redelivered older edit must not revert a newer one (issue #9, idempotency).
    try:
        h.send(op, h.tenant_a, f"newer-{h.seed}", s.other)
    except StowageError:
        pass  # refused on its own merits: nothing newer to protect
    newer = s.observe()
    late = h.attempt(op, h.tenant_a, key, s.payload)
    reverted = s.observe() != newer
    if late.status != "duplicate" or reverted:
        problems.append(f"[2b replay after a newer request] a redelivery of {op} answered {late}"
                        + (" and changed the state" if reverted else ""))

    # A replay after the target was deleted is not a 500 and brings nothing back (issue #9,
    # idempotency): a duplicate, or NotFound where the marker went with the target.
    if s.remove is not None:
        s.remove()
        gone = s.observe()
        try:
            after = h.send(op, h.tenant_a, key, s.payload)
        except NotFound:
            pass
        except StowageError as exc:
            problems.append(f"[2c replay after deletion] a redelivery of {op} raised "
                            f"{type(exc).__name__} ({exc.status}): {exc}")
        else:
            if after.status == "applied":
                problems.append(f"[2c replay after deletion] a redelivery of {op} was applied again: {after}")
        if s.observe() != gone:
            problems.append(f"[2c replay after deletion] a redelivery of {op} changed the state")
    assert not problems, "\n".join(problems)


# --------------------------------------------------------------------------- 4. continuation tokens


def _tampered(token: str) -> str:
    middle = len(token) // 2
    return token[:middle] + ("A" if token[middle] != "A" else "B") + token[middle + 1:]


@pytest.mark.parametrize("domain", DOMAIN_CASES)
def test_foreign_forged_and_garbage_continuation_tokens_are_refused(contract_stores: Stores, domain: Domain):
    h = Harness(contract_stores, domain)
    probe, service = h.probe, h.service
    ref_a = probe.populate(service, h.tenant_a, h.seed)
    ref_b = probe.populate(service, h.tenant_b, h.seed)  # the same ids, so B's listing reaches the token
    listings_a, listings_b = probe.listings(service, h.tenant_a, ref_a), probe.listings(service, h.tenant_b, ref_b)
    accepted: list[str] = []
    for name, listing in listings_a.items():
        token = listing(None, 1).continuation
        assert token, f"{domain.name} listing {name} gave no continuation at limit=1: populate must make two entries"
        assert listing(token, 1).items, f"{name}: the owner's own token must give the next page"
        for what, bad, reader in (("the other tenant's", token, listings_b[name]),
                                  ("a tampered", _tampered(token), listing),
                                  ("a garbage", "not-a-token", listing),
                                  ("an empty-looking", "e30", listing)):  # base64 of "{}"
            try:
                page = reader(bad, 1)
            except InvalidInput as exc:
                assert exc.status == 400
                continue
            accepted.append(f"{name} accepted {what} token and answered {len(page.items)} item(s)")
    assert not accepted, "\n".join(accepted)


# --------------------------------------------------------------------------- 5. jobs


def _bounded(method: Any) -> dict[str, Any] | None:
    """Arguments that stop a run after one item, if the method takes any."""
    parameters = inspect.signature(method).parameters
    if "budget" in parameters:
        return {"budget": Budget(seconds=60, items=1)}
    if "limit" in parameters:
        return {"limit": 1}
    return None


@pytest.mark.parametrize(("domain", "job"), JOB_CASES)
def test_jobs_resume_after_their_budget_and_are_idempotent(contract_stores: Stores, domain: Domain, job: Job):
    h = Harness(contract_stores, domain)
    job_probe = h.probe.jobs.get(job.name)
    if job_probe is None:
        pytest.fail(f"job {job.name!r} of {domain.name} has no JobProbe in tests/domains/probes.py", pytrace=False)
    service, stores, tenant, seed = h.service, h.stores, h.tenant_a, h.seed
    unchecked = None  # why resumption could not be checked, if it could not
    wait = job_probe.make_due(service, stores, tenant, seed, 3)
    if wait is None:
        unchecked = "no public call makes due work for this job"
    else:
        time.sleep(wait)
        pending = job_probe.pending(service, stores, tenant, seed)
        bounded = _bounded(getattr(service, job_probe.method))
        if pending < 0:
            unchecked = "what is left to do is not observable through the public API"
        elif bounded is None:
            unchecked = f"{job_probe.method} takes neither a budget nor a limit"
        else:
            assert pending == 3, f"made 3 due items, {pending} pending"
            handled(getattr(service, job_probe.method)(**bounded))
            left = job_probe.pending(service, stores, tenant, seed)
            assert left >= 2, f"{job_probe.method}({bounded}) handled {3 - left} of 3 items: the bound did not hold"

    runs = []
    for _ in range(30):  # resumes: each run takes the next chunk, until a run finds nothing left
        before = job_probe.snapshot(service, stores, tenant, seed)
        runs.append(handled(job.run(service)))
        if runs[-1] == 0:
            # That run met the state the run before left: it must have changed nothing.
            assert job_probe.snapshot(service, stores, tenant, seed) == before, (
                f"{job.name} changed state it had already handled (runs {runs})")
            break
    else:
        pytest.fail(f"{job.name} still handled items after 30 runs: {runs}")
    if unchecked is None:
        left = job_probe.pending(service, stores, tenant, seed)
        assert left == 0, f"{job.name} left {left} of 3 due items after runs {runs}"
    if unchecked is not None:
        pytest.skip(f"{job.name}: repeated runs checked; resumption after a budget not checked: {unchecked}")
