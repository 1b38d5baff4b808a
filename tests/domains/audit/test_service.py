"""The audit domain on every backend: entries from audited changes, exactly once, proofs, erasure, tampering.

Proofs are checked against an independent RFC 6962 implementation written here from
the RFC's definitions (MTH and PATH by recursion over the list of entries), not
against :mod:`shared.storage.tlog`'s own code. Tampering is judged by the
``stowage audit verify`` command, run in-process with the test's settings as its
environment.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from cli.main import main as stowage
from shared import names
from shared.backends import BlobStore
from shared.backends.base import BlobProperties
from shared.config import Settings
from shared.domains.audit import AuditService
from shared.domains.audit.service import log_prefix, origin_of
from shared.errors import InvalidInput, NotFound, StowageError
from shared.request_context import Actor, RequestContext, acting_as
from shared.storage.changefeed import ChangeRecord
from shared.storage.tlog import (
    Log,
    LogCorrupt,
    NoteSigner,
    anchor_path,
    anchored_size,
    bundle_path,
    tile_path,
    verify_consistency,
)
from shared.stores import Stores

# --------------------------------------------------------------------------- an independent RFC 6962


def _mth(entries: list[bytes]) -> bytes:
    n = len(entries)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return hashlib.sha256(b"\x00" + entries[0]).digest()
    k = 1 << ((n - 1).bit_length() - 1)
    return hashlib.sha256(b"\x01" + _mth(entries[:k]) + _mth(entries[k:])).digest()


def _path(m: int, entries: list[bytes]) -> list[bytes]:
    n = len(entries)
    if n == 1:
        return []
    k = 1 << ((n - 1).bit_length() - 1)
    if m < k:
        return [*_path(m, entries[:k]), _mth(entries[k:])]
    return [*_path(m - k, entries[k:]), _mth(entries[:k])]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# --------------------------------------------------------------------------- helpers


def _tenant() -> str:
    return f"au{uuid.uuid4().hex[:10]}"


def _record(service: AuditService, tenant: str, target: str, *, audited: bool = True, details: Any = None) -> None:
    service.record(tenant, "objects", "put", "object", target, details=details or {"target": target},
                   audited=audited)


def _all_entries(service: AuditService, tenant: str, **filters: Any) -> list[Any]:
    items: list[Any] = []
    token = None
    while True:
        page = service.entries(tenant, limit=100, continuation=token, **filters)
        items.extend(page.items)
        token = page.continuation
        if token is None:
            return items


def _drain(service: AuditService, tenant: str | None = None) -> None:
    for _ in range(50):
        if service.sequence_changes(tenant).total == 0:
            return
    raise AssertionError("sequence_changes still had work after 50 runs")


def _environment(settings: Settings) -> dict[str, str]:
    env = {names.SETTING_BACKEND: settings.backend, names.SETTING_DATA_DIR: str(settings.data_dir)}
    if settings.azure_connection_string:
        env[names.SETTING_AZURE_CONNECTION_STRING] = settings.azure_connection_string
    if settings.backend == "aws":
        env.update({names.SETTING_AWS_ENDPOINT_URL: str(settings.aws_endpoint_url),
                    names.SETTING_AWS_REGION: settings.aws_region, names.SETTING_AWS_BUCKET: settings.aws_bucket,
                    names.SETTING_AWS_TABLE_PREFIX: settings.aws_table_prefix,
                    names.SETTING_AWS_QUEUE_PREFIX: settings.aws_queue_prefix})
    if settings.audit_anchor:
        env[names.SETTING_AUDIT_ANCHOR] = settings.audit_anchor
    return env


@pytest.fixture
def verify_cli(settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    """``verify_cli(tenant, *more_args) -> (exit code, output)``: ``stowage audit verify`` in-process."""
    return _cli(settings, monkeypatch, capsys)


@pytest.fixture
def anchored_verify_cli(anchored_settings: Settings, monkeypatch: pytest.MonkeyPatch,
                        capsys: pytest.CaptureFixture[str]):
    """``verify_cli`` with ``STOWAGE_AUDIT_ANCHOR`` set to the test's anchor."""
    return _cli(anchored_settings, monkeypatch, capsys)


def _cli(settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    def run(tenant: str, *args: str) -> tuple[int, str]:
        monkeypatch.delenv(names.SETTING_AUDIT_ANCHOR, raising=False)  # a test may run both kinds
        for name, value in _environment(settings).items():
            monkeypatch.setenv(name, value)
        capsys.readouterr()
        code = stowage(["audit", "verify", "--tenant", tenant, *args])
        return code, " ".join(capsys.readouterr().out.split())  # rich wraps long lines

    return run


# --------------------------------------------------------------------------- entries


def test_audited_changes_become_gapless_entries_with_proofs(stores: Stores) -> None:
    service, tenant = AuditService(stores), _tenant()
    ctx = RequestContext(actor=Actor("user", "alice", "Alice", ("admin",)), source="http",
                         trace_id="4bf92f3577b34da6a3ce929d0e0e4736", span_id="00f067aa0ba902b7",
                         ids={"workflow_id": "wf1"})
    with acting_as(ctx):
        for i in range(7):
            _record(service, tenant, f"k{i}", audited=i not in (2, 5))
    # Also a record in another domain's table, written as a domain writes it: in its own batch.
    table = stores.table(names.TABLE_OBJECTS)
    table.batch([service.feed.outbox_op(tenant, names.TABLE_OBJECTS, tenant, ChangeRecord(
        "objects", "delete", "object", "k7", actor={"type": "agent", "id": "bot"}, details={"v": 1}))])
    service.sequence_changes(tenant)

    changes = service.changes(tenant, limit=100).items
    assert [c.seq for c in changes] == list(range(1, 9))
    entries = _all_entries(service, tenant)
    assert [e.target["id"] for e in entries] == ["k0", "k1", "k3", "k4", "k6", "k7"]
    assert [e.index for e in entries] == list(range(6))
    assert [e.seq for e in entries] == [c.seq for c in changes if c.audited]
    first = entries[0]
    assert first.event == "objects.put" and first.category == "data_access" and first.level == "info"
    assert first.actor == {"type": "user", "id": "alice", "name": "Alice", "roles": ["admin"]}
    assert first.context["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736" and first.context["workflow_id"] == "wf1"
    assert first.metadata["transport"] == "http"
    assert set(first.source) == {"component", "instance", "version"}
    assert "k0" not in json.dumps(json.loads(first.entry)["details_sha256"])  # only the hash is in the leaf
    assert "details" not in json.loads(first.entry)

    leaves = [e.entry.encode() for e in entries]
    note = service.checkpoint(tenant)
    lines = note.split("\n")
    assert lines[0] == origin_of(tenant) and lines[1] == "6" and lines[2] == _b64(_mth(leaves))
    for e in entries:
        proof = service.entry(tenant, e.seq)
        assert proof.tree_size == 6 and proof.root_hash == _b64(_mth(leaves))
        assert proof.inclusion == [_b64(h) for h in _path(e.index, leaves)]
    with pytest.raises(NotFound):
        service.entry(tenant, 3)  # sequenced, not audited: no entry
    status = service.status(tenant)
    assert (status.newest_seq, status.log_size, status.newest_audited_seq, status.pending) == (8, 6, 8, 0)

    # Filters.
    assert [e.target["id"] for e in _all_entries(service, tenant, actor="bot")] == ["k7"]
    assert [e.seq for e in _all_entries(service, tenant, target="k3")] == [4]
    assert len(_all_entries(service, tenant, category="data_access")) == 6
    assert _all_entries(service, tenant, category="security") == []
    assert _all_entries(service, tenant, since=first.seq and 4102444800.0) == []  # year 2100
    with pytest.raises(InvalidInput):
        service.entries(tenant, category="nonsense")
    page = service.entries(tenant, limit=2)
    assert [e.seq for e in page.items] == [1, 2] and page.continuation
    assert [e.seq for e in service.entries(tenant, limit=2, continuation=page.continuation).items] == [4, 5]


def test_more_changes_and_a_second_append_stay_consistent(stores: Stores) -> None:
    service, tenant = AuditService(stores), _tenant()
    for i in range(3):
        _record(service, tenant, f"a{i}")
    service.sequence_changes(tenant)
    old = service.checkpoint(tenant)
    for i in range(300):  # across an entry-bundle boundary (256)
        _record(service, tenant, f"b{i}", audited=i % 3 != 0)
    _drain(service, tenant)
    entries = _all_entries(service, tenant)
    assert len(entries) == 3 + 200
    leaves = [e.entry.encode() for e in entries]
    proof = service.consistency(tenant, 3)
    assert proof.new_size == 203
    assert verify_consistency(3, 203, _mth(leaves[:3]), _mth(leaves),
                              [base64.b64decode(h) for h in proof.proof])
    assert old.split("\n")[2] == proof.old_root
    with pytest.raises(InvalidInput):
        service.consistency(tenant, 0)
    with pytest.raises(InvalidInput):
        service.consistency(tenant, 5, 300)


def test_two_sequencers_and_eight_writers_give_each_change_exactly_one_entry(stores: Stores,
                                                                              settings: Settings) -> None:
    tenant = _tenant()
    writer = AuditService(stores)
    other_stores = Stores.from_settings(settings)
    sequencers = [AuditService(stores), AuditService(other_stores)]
    errors: list[BaseException] = []
    done = threading.Event()

    def write(n: int) -> None:
        try:
            for i in range(10):
                _record(writer, tenant, f"w{n}-{i}", audited=i != 9)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    def sequence(service: AuditService) -> None:
        try:
            while not done.is_set():
                service.sequence_changes(tenant)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    runners = [threading.Thread(target=sequence, args=(s,)) for s in sequencers]
    writers = [threading.Thread(target=write, args=(n,)) for n in range(8)]
    for thread in runners + writers:
        thread.start()
    for thread in writers:
        thread.join()
    done.set()
    for thread in runners:
        thread.join()
    other_stores.close()
    assert not errors, errors
    _drain(sequencers[0], tenant)
    entries = _all_entries(sequencers[0], tenant)
    targets = [e.target["id"] for e in entries]
    assert sorted(targets) == sorted(f"w{n}-{i}" for n in range(8) for i in range(9))
    assert [e.index for e in entries] == list(range(72))
    seqs = [e.seq for e in entries]
    assert seqs == sorted(seqs) and len(set(seqs)) == 72
    assert [c.seq for c in sequencers[0].changes(tenant, limit=1000).items] == list(range(1, 81))
    assert sequencers[0].verify(tenant).ok


class _StallingFeed:
    """The real ChangeFeed, except that the first batch read runs ``meanwhile`` first: the instance
    stalls after reading its progress, long enough for its lease to expire and another to append."""

    def __init__(self, inner: Any, meanwhile: Any) -> None:
        self._inner, self._meanwhile = inner, meanwhile

    def changes(self, tenant: str, **kwargs: Any) -> Any:
        if kwargs.get("limit", 100) > 1 and self._meanwhile is not None:
            meanwhile, self._meanwhile = self._meanwhile, None
            meanwhile()
        return self._inner.changes(tenant, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def test_a_stalled_instance_whose_lease_was_taken_over_appends_nothing_twice(stores: Stores) -> None:
    tenant = _tenant()
    writer = AuditService(stores)
    for i in range(4):
        _record(writer, tenant, f"x{i}")
    writer.sequence_changes(tenant)  # the log has 4 entries; then 3 more changes
    for i in range(3):
        _record(writer, tenant, f"y{i}")
    writer.feed.sequence(tenant)
    later = AuditService(stores, clock=lambda: time.time() + 1000)  # sees the stalled one's lease expired
    stalled = AuditService(stores)
    stalled.feed = _StallingFeed(stalled.feed, lambda: later.sequence_changes(tenant))  # type: ignore[assignment]
    result = stalled.sequence_changes(tenant)
    assert tenant in result.contended and not result.appended
    entries = _all_entries(writer, tenant)
    assert [e.target["id"] for e in entries] == [f"x{i}" for i in range(4)] + [f"y{i}" for i in range(3)]
    assert writer.verify(tenant).ok


class _Killed(BaseException):
    """The sequencer process dies here (as kill -9 would: no handler runs, nothing after it)."""


class CrashingBlobs:
    """The real BlobStore, except that the chosen write raises: the process died before it."""

    def __init__(self, inner: BlobStore, dies_on: str) -> None:
        self._inner, self._dies_on = inner, dies_on

    def put(self, key: str, data: bytes, **kwargs: Any) -> BlobProperties:
        if key.endswith(self._dies_on):
            raise _Killed(key)
        return self._inner.put(key, data, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


@pytest.mark.parametrize("existing", [0, 5], ids=["first-append", "later-append"])
def test_a_crash_between_the_tiles_and_the_checkpoint_loses_and_duplicates_nothing(stores: Stores,
                                                                                   existing: int) -> None:
    tenant = _tenant()
    healthy = AuditService(stores)
    for i in range(existing):
        _record(healthy, tenant, f"old{i}")
    healthy.sequence_changes(tenant)
    for i in range(4):
        _record(healthy, tenant, f"new{i}")
    dying = AuditService(stores)
    dying.blobs = CrashingBlobs(dying.blobs, "/checkpoint")  # type: ignore[assignment]
    with pytest.raises(_Killed):
        dying.sequence_changes(tenant)
    # The tiles and bundle of the new size were written; the checkpoint was not.
    assert healthy.status(tenant).log_size == existing
    assert stores.blobs().head(log_prefix(tenant) + bundle_path(0, existing + 4))
    assert _all_entries(healthy, tenant) == _all_entries(healthy, tenant)[:existing]

    # kill -9 runs no `finally`: the dead process's lease stays until it expires.
    from shared.backends import Entity
    from shared.domains.audit.service import LEASE_SECONDS

    stores.table(names.TABLE_AUDIT).upsert(Entity(tenant, "lease", {"holder": "dead", "until": time.time() + 100}))
    assert tenant in AuditService(stores).sequence_changes(tenant).contended
    recovered = AuditService(stores, clock=lambda: time.time() + LEASE_SECONDS)
    _drain(recovered, tenant)
    entries = _all_entries(recovered, tenant)
    assert [e.target["id"] for e in entries] == [f"old{i}" for i in range(existing)] + [f"new{i}" for i in range(4)]
    assert [e.index for e in entries] == list(range(existing + 4))
    assert recovered.verify(tenant).ok


def test_a_crash_after_the_rows_before_the_tiles_reuses_the_same_leaves(stores: Stores) -> None:
    tenant = _tenant()
    service = AuditService(stores)
    for i in range(3):
        _record(service, tenant, f"n{i}")
    dying = AuditService(stores)
    dying.blobs = CrashingBlobs(dying.blobs, "tile/entries/000.p/3")  # type: ignore[assignment]
    with pytest.raises(_Killed):
        dying.sequence_changes(tenant)
    rows = {row.row_key: str(row["entry"]) for row in stores.table(names.TABLE_AUDIT).query_all(tenant, prefix="e|")}
    assert len(rows) == 3
    assert _all_entries(service, tenant) == []  # rows beyond the log are not shown
    _drain(service, tenant)
    assert [e.entry for e in _all_entries(service, tenant)] == list(rows.values())


def test_erasing_details_keeps_every_proof_valid_and_is_audited(stores: Stores) -> None:
    service, tenant = AuditService(stores), _tenant()
    for i in range(5):
        _record(service, tenant, f"p{i}", details={"email": f"person{i}@example.com"})
    service.sequence_changes(tenant)
    before = service.entry(tenant, 3)
    assert before.entry.details == {"email": "person2@example.com"} and before.entry.salt
    erased = service.erase_details(tenant, 3)
    assert erased.details is None and erased.salt is None and erased.erased_at
    assert service.erase_details(tenant, 3) == erased  # idempotent
    raw = stores.table(names.TABLE_AUDIT).get(tenant, "e|00000000000000000003")
    assert "person2" not in json.dumps(raw.properties, default=str)
    after = service.entry(tenant, 3)
    assert (after.entry.entry, after.inclusion, after.root_hash) == (before.entry.entry, before.inclusion,
                                                                     before.root_hash)
    service.sequence_changes(tenant)
    entries = _all_entries(service, tenant)
    assert entries[-1].event == "audit.erase_details" and entries[-1].target == {"type": "audit_entry", "id": "3"}
    assert entries[-1].category == "security"
    leaves = [e.entry.encode() for e in entries]
    for e in entries:
        assert service.entry(tenant, e.seq).inclusion == [_b64(h) for h in _path(e.index, leaves)]
    report = service.verify(tenant)
    assert report.ok, report.problems
    with pytest.raises(NotFound):
        service.erase_details(tenant, 99)


def test_another_tenant_cannot_read_entries_checkpoints_or_proofs(stores: Stores) -> None:
    service, a, b = AuditService(stores), _tenant(), _tenant()
    for i in range(3):
        _record(service, a, f"s{i}")
    _record(service, b, "mine")
    service.sequence_changes()
    assert [e.target["id"] for e in _all_entries(service, b)] == ["mine"]
    assert service.entry(b, 1).entry.target["id"] == "mine"
    with pytest.raises(NotFound):
        service.entry(b, 2)
    with pytest.raises(InvalidInput):
        service.consistency(b, 1, 3)
    assert service.checkpoint(b) != service.checkpoint(a)
    token = service.entries(a, limit=1).continuation
    assert token
    with pytest.raises(InvalidInput):
        service.entries(b, limit=1, continuation=token)
    token = service.changes(a, limit=1).continuation
    assert token
    with pytest.raises(InvalidInput):
        service.changes(b, limit=1, continuation=token)
    with pytest.raises(NotFound):
        service.erase_details(b, 3)


# --------------------------------------------------------------------------- tampering, judged by the CLI


@pytest.fixture
def audited(stores: Stores) -> tuple[AuditService, str]:
    service, tenant = AuditService(stores), _tenant()
    for i in range(10):
        _record(service, tenant, f"t{i}")
    service.sequence_changes(tenant)
    return service, tenant


def _flip(blobs: BlobStore, key: str, offset: int) -> None:
    data = bytearray(blobs.get(key).data)
    data[offset] ^= 0x01
    blobs.put(key, bytes(data))


def test_an_intact_log_verifies_and_its_checkpoint_can_be_trusted_later(audited, verify_cli, tmp_path: Path) -> None:
    service, tenant = audited
    saved = tmp_path / "checkpoint.txt"
    code, out = verify_cli(tenant, "--save-checkpoint", str(saved))
    assert code == 0 and "OK" in out and "10 entries" in out, out
    for i in range(3):
        _record(service, tenant, f"later{i}")
    service.sequence_changes(tenant)
    code, out = verify_cli(tenant, "--trusted-checkpoint", str(saved))
    assert code == 0 and "13 entries" in out and "extends the trusted checkpoint" in out, out
    assert stowage(["audit", "vkey"]) == 0
    code, out = verify_cli(tenant, "--vkey", service.verifier().vkey)
    assert code == 0, out
    code, out = verify_cli(tenant, "--vkey", NoteSigner.generate("stowage.dev/audit").verifier.vkey)
    assert code == 1 and "checkpoint-invalid" in out, out


@pytest.mark.parametrize(("what", "kind"), [
    ("tile", "entry-hash"), ("bundle", "entry-hash"), ("checkpoint-root", "checkpoint-invalid"),
    ("checkpoint-signature", "checkpoint-invalid"), ("truncated-bundle", "bundle-malformed"),
    ("missing-tile", "tile-missing"), ("reorder", "entry-hash"),
])
def test_tampering_is_detected_by_verify(audited, verify_cli, stores: Stores, what: str, kind: str) -> None:
    service, tenant = audited
    blobs, prefix = stores.blobs(), log_prefix(tenant)
    if what == "tile":
        _flip(blobs, prefix + tile_path(0, 0, 10), 40)
    elif what == "bundle":
        _flip(blobs, prefix + bundle_path(0, 10), 30)
    elif what == "checkpoint-root":
        note = blobs.get(prefix + "checkpoint").data.decode()
        lines = note.split("\n")
        root = bytearray(base64.b64decode(lines[2]))
        root[0] ^= 1
        lines[2] = _b64(bytes(root))
        blobs.put(prefix + "checkpoint", "\n".join(lines).encode())
    elif what == "checkpoint-signature":
        _flip(blobs, prefix + "checkpoint", len(blobs.get(prefix + "checkpoint").data) - 5)
    elif what == "truncated-bundle":
        key = prefix + bundle_path(0, 10)
        blobs.put(key, blobs.get(key).data[:-3])
    elif what == "missing-tile":
        blobs.delete(prefix + tile_path(0, 0, 10))
    elif what == "reorder":
        from shared.storage.tlog import decode_bundle, encode_bundle

        key = prefix + bundle_path(0, 10)
        entries = decode_bundle(blobs.get(key).data)
        entries[3], entries[4] = entries[4], entries[3]
        blobs.put(key, encode_bundle(entries))
    code, out = verify_cli(tenant)
    assert code == 1, out
    assert "FAILED" in out and kind in out, out
    damaged = {"bundle": 1, "reorder": 4, "truncated-bundle": 10}  # an entry (by seq) the change reached
    if what in damaged:  # the proof endpoint refuses it too, rather than prove what the row says
        with pytest.raises(StowageError):
            service.entry(tenant, damaged[what])


def test_rolling_back_and_forking_are_detected_against_a_trusted_checkpoint(audited, verify_cli, stores: Stores,
                                                                            tmp_path: Path) -> None:
    service, tenant = audited
    blobs, prefix = stores.blobs(), log_prefix(tenant)
    older = service.checkpoint(tenant)
    for i in range(2):
        _record(service, tenant, f"more{i}")
    service.sequence_changes(tenant)
    newer = service.checkpoint(tenant)
    trusted = tmp_path / "trusted.txt"
    trusted.write_text(newer)
    # Truncation: the checkpoint put back to an older one (validly signed); only a saved later one shows it.
    blobs.put(prefix + "checkpoint", older.encode())
    code, out = verify_cli(tenant)
    assert code == 0, out
    code, out = verify_cli(tenant, "--trusted-checkpoint", str(trusted))
    assert code == 1 and "inconsistent" in out, out
    blobs.put(prefix + "checkpoint", newer.encode())
    # Fork: a checkpoint of the same size, another root, signed by the same key.
    fork = Log(blobs, f"fork/{tenant}/", origin_of(tenant), service.signer())
    fork.append([f"forged {i}".encode() for i in range(12)])
    forked = tmp_path / "forked.txt"
    forked.write_text(fork.checkpoint().note)
    code, out = verify_cli(tenant, "--trusted-checkpoint", str(forked))
    assert code == 1 and "inconsistent" in out, out
    # A client holding the forked checkpoint cannot verify the log's proofs against it.
    leaf = service.entry(tenant, 1)
    assert leaf.root_hash != forked.read_text().split("\n")[2]


def test_a_stored_entry_row_changed_is_detected(audited, verify_cli, stores: Stores) -> None:
    service, tenant = audited
    table = stores.table(names.TABLE_AUDIT)
    row = table.get(tenant, "e|00000000000000000002")
    table.update(type(row)(row.partition_key, row.row_key, {**row.properties, "details": '{"target":"forged"}'}))
    code, out = verify_cli(tenant)
    assert code == 1 and "details-hash" in out, out
    row = table.get(tenant, "e|00000000000000000003")
    table.update(type(row)(row.partition_key, row.row_key, {**row.properties, "entry": str(row["entry"]) + " "}))
    with pytest.raises(LogCorrupt):
        service.entry(tenant, 3)


def test_the_signing_key_is_the_setting_or_one_generated_once(stores: Stores, settings: Settings) -> None:
    generated = AuditService(stores).verifier().vkey
    again = Stores.from_settings(settings)
    try:
        assert AuditService(again).verifier().vkey == generated  # read back from the create-only blob
    finally:
        again.close()
    seed = _b64(bytes(range(32)))
    configured = Stores(stores.backend, Settings(**{**_settings_dict(settings), "audit_signing_key": seed}))
    assert AuditService(configured).verifier().vkey == NoteSigner.from_base64("stowage.dev/audit", seed).verifier.vkey
    with pytest.raises(InvalidInput):
        Settings(audit_signing_key="not base64!")
    with pytest.raises(InvalidInput):
        Settings(audit_signing_key=_b64(b"short"))


def _settings_dict(settings: Settings) -> dict[str, Any]:
    import dataclasses

    return {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings)}


def test_the_domains_own_writes_become_entries_and_unaudited_ones_do_not(stores: Stores) -> None:
    from shared.domains.objects.service import ObjectService

    service, tenant = AuditService(stores), _tenant()
    with acting_as(RequestContext(actor=Actor("agent", "bot-1"), source="queue")):
        ObjectService(stores).put(tenant, "reports/q1", b"numbers", "text/plain")
        service.record(tenant, "checkpoints", "checkpoints.put", "checkpoint", "t1/cp1", audited=False)
        ObjectService(stores).delete(tenant, "reports/q1")
    service.sequence_changes(tenant)
    changes = service.changes(tenant, limit=100).items
    assert [c.op for c in changes] == ["objects.put", "checkpoints.put", "objects.delete"]
    entries = _all_entries(service, tenant)
    assert [(e.event, e.target["id"]) for e in entries] == [("objects.put", "reports/q1"),
                                                            ("objects.delete", "reports/q1")]
    assert entries[0].actor == {"type": "agent", "id": "bot-1"} and entries[0].metadata["transport"] == "queue"
    assert [e.seq for e in entries] == [1, 3]


# --------------------------------------------------------------------------- the entries filter's scan bound


def test_a_filtered_page_stops_after_the_scan_bound_and_its_continuation_resumes(
        stores: Stores, monkeypatch: pytest.MonkeyPatch) -> None:
    import shared.domains.audit.service as service_module

    monkeypatch.setattr(service_module, "SCAN_BOUND", 5)
    service, tenant = AuditService(stores), _tenant()
    for i in range(1, 13):
        _record(service, tenant, "match" if i in (1, 9, 12) else f"other{i}")
    service.sequence_changes(tenant)

    def pages(**filters: Any) -> list[list[int]]:
        found, token = [], None
        while True:
            page = service.entries(tenant, limit=100, continuation=token, **filters)
            found.append([e.seq for e in page.items])
            token = page.continuation
            if token is None:
                return found

    # 12 entries, 5 scanned per page: rows 1-5, 6-10, 11-12; each page holds what its rows matched.
    assert pages(target="match") == [[1], [9], [12]]
    assert pages(target="nobody") == [[], [], []]  # empty pages that still go on, then stop
    assert pages(target="match", after=9) == [[12]]  # 2 rows left: under the bound, no continuation
    assert pages() == [list(range(1, 6)), list(range(6, 11)), [11, 12]]  # unfiltered pages obey it too


# --------------------------------------------------------------------------- anchoring


def _anchored_notes(stores: Stores, tenant: str) -> dict[int, str]:
    """Every checkpoint note in the anchor for ``tenant``, by size (only anchor keys may be there)."""
    anchor = stores.audit_anchor()
    assert anchor is not None
    prefix = log_prefix(tenant)
    notes: dict[int, str] = {}
    for item in anchor.list_all(prefix):
        size = anchored_size(item.key.removeprefix(prefix))
        assert size is not None, f"the anchor holds something else: {item.key}"
        notes[size] = anchor.get(item.key).data.decode()
    return notes


def test_every_checkpoint_is_anchored_and_the_status_and_verify_report_it(anchored_stores: Stores, stores: Stores,
                                                                          anchored_verify_cli) -> None:
    service, tenant = AuditService(anchored_stores), _tenant()
    for i in range(3):
        _record(service, tenant, f"a{i}")
    service.sequence_changes(tenant)
    first = service.checkpoint(tenant)
    for i in range(2):
        _record(service, tenant, f"b{i}")
    service.sequence_changes(tenant)
    second = service.checkpoint(tenant)
    assert _anchored_notes(anchored_stores, tenant) == {3: first, 5: second}
    assert service.status(tenant).anchored_size == 5
    assert AuditService(stores).status(tenant).anchored_size is None  # anchoring not configured
    report = service.verify(tenant)
    assert report.ok and (report.anchored, report.anchored_size) == (2, 5), report.problems
    assert AuditService(stores).verify(tenant).anchored is None
    code, out = anchored_verify_cli(tenant)
    assert code == 0 and "extends all 2 anchored checkpoints (newest: size 5)" in out, out
    # Anchoring again is a no-op; the anchor keeps one immutable note per size.
    log = Log(anchored_stores.blobs(), log_prefix(tenant), origin_of(tenant), service.signer(),
              anchor=anchored_stores.audit_anchor())
    assert log.anchor_checkpoint() is not None and log.newest_anchored() == 5
    assert _anchored_notes(anchored_stores, tenant) == {3: first, 5: second}
    assert service.status(_tenant()).anchored_size == 0  # configured, nothing anchored yet


class _DyingAnchor:
    """The real anchor store, except that the write of one key kills the process (kill -9: no handler runs)."""

    def __init__(self, inner: BlobStore, dies_on: str) -> None:
        self._inner, self._dies_on = inner, dies_on

    def put(self, key: str, data: bytes, **kwargs: Any) -> BlobProperties:
        if key.endswith(self._dies_on):
            raise _Killed(key)
        return self._inner.put(key, data, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def test_a_crash_between_the_commit_and_the_anchor_write_is_healed_by_the_next_run(anchored_stores: Stores) -> None:
    from shared.domains.audit.service import LEASE_SECONDS

    healthy, tenant = AuditService(anchored_stores), _tenant()
    for i in range(3):
        _record(healthy, tenant, f"c{i}")
    healthy.sequence_changes(tenant)
    for i in range(2):
        _record(healthy, tenant, f"d{i}")
    dying = AuditService(anchored_stores)
    dying.anchor = _DyingAnchor(dying.anchor, anchor_path(5))  # type: ignore[arg-type, assignment]
    with pytest.raises(_Killed):
        dying.sequence_changes(tenant)
    assert healthy.status(tenant).log_size == 5  # committed in the primary ...
    assert sorted(_anchored_notes(anchored_stores, tenant)) == [3]  # ... not anchored
    assert healthy.verify(tenant).ok  # an anchor behind the log is not tampering

    later = AuditService(anchored_stores, clock=lambda: time.time() + LEASE_SECONDS)  # any lease left has expired
    later.sequence_changes(tenant)  # nothing new to append: the run still anchors the current checkpoint
    assert _anchored_notes(anchored_stores, tenant) == {3: _anchored_notes(anchored_stores, tenant)[3],
                                                        5: healthy.checkpoint(tenant)}
    assert [e.target["id"] for e in _all_entries(healthy, tenant)] == ["c0", "c1", "c2", "d0", "d1"]
    report = healthy.verify(tenant)
    assert report.ok and report.anchored == 2, report.problems


def _forge_the_primary(stores: Stores, service: AuditService, tenant: str) -> None:
    """What an attacker with write access to the primary store and the signing key does: change an entry
    (and its row, consistently), rebuild a valid tree of the same size and sign it with the log's key."""
    from shared.backends import Entity
    from shared.domains.audit import _layout as layout

    blobs, prefix = stores.blobs(), log_prefix(tenant)
    entries = list(Log(blobs, prefix, origin_of(tenant), verifiers=[service.verifier()]).entries())
    document = json.loads(entries[2])
    document["actor"] = {"type": "user", "id": "mallory"}
    entries[2] = layout.canonical(document)
    scratch = f"forge/{tenant}/"
    Log(blobs, scratch, origin_of(tenant), service.signer()).append(entries)
    for item in list(blobs.list_all(scratch)):
        blobs.put(prefix + item.key.removeprefix(scratch), blobs.get(item.key).data)
    table = stores.table(names.TABLE_AUDIT)
    row = table.get(tenant, layout.entry_row(document["seq"]))
    table.update(Entity(tenant, row.row_key, {**row.properties, "entry": entries[2].decode()}))


@pytest.mark.parametrize("attack", ["fork", "truncate"])
def test_a_rewritten_primary_is_caught_through_the_anchor_even_when_re_signed(
        anchored_stores: Stores, stores: Stores, anchored_verify_cli, verify_cli, attack: str) -> None:
    service, tenant = AuditService(anchored_stores), _tenant()
    for i in range(4):
        _record(service, tenant, f"e{i}")
    service.sequence_changes(tenant)
    older = service.checkpoint(tenant)
    for i in range(4):
        _record(service, tenant, f"f{i}")
    service.sequence_changes(tenant)
    if attack == "fork":  # another tree of the same size, validly signed
        _forge_the_primary(stores, service, tenant)
        assert service.checkpoint(tenant).split("\n")[1] == "8"
    else:  # the log rolled back to an older checkpoint, validly signed
        stores.blobs().put(log_prefix(tenant) + "checkpoint", older.encode())

    # Without the anchor the rewrite passes every check: the tree, the signature, the rows.
    assert AuditService(stores).verify(tenant).ok
    code, out = verify_cli(tenant)
    assert code == 0, out
    # Through the anchor it does not.
    report = service.verify(tenant)
    assert {p.kind for p in report.problems} == {"anchor-inconsistent"}, report.problems
    # The fork changed entry 2: both anchored trees (sizes 4 and 8) contain it. The rollback lost size 8.
    assert {p.key for p in report.problems} == ({anchor_path(4), anchor_path(8)} if attack == "fork"
                                                else {anchor_path(8)})
    for problem in report.problems:
        assert ("rewritten or forked" if attack == "fork" else "truncated or replaced") in problem.detail
    code, out = anchored_verify_cli(tenant)
    assert code == 1 and "FAILED" in out and "anchor-inconsistent" in out, out
    if attack == "fork":  # and the sequencer does not build on a forked log
        _record(service, tenant, "after")
        result = service.sequence_changes(tenant)
        assert tenant in result.failed and service.status(tenant).log_size == 8


def test_the_s3_anchor_is_write_once_and_a_version_written_over_it_is_reported(
        anchored_stores: Stores, anchored_settings: Settings, settings: Settings) -> None:
    if settings.backend != "aws":
        pytest.skip("S3 Object Lock is the aws anchor's; the local and azure anchors are containers (Azure's "
                    "immutability policy is declared in infra/ and Azurite does not emulate it)")
    from botocore.exceptions import ClientError

    from shared.errors import AlreadyExists, Conflict
    from shared.stores import ANCHOR_BUCKET_CONTAINER
    from tests.domains.audit.conftest import s3_client

    service, tenant = AuditService(anchored_stores), _tenant()
    for i in range(2):
        _record(service, tenant, f"g{i}")
    service.sequence_changes(tenant)
    anchor = anchored_stores.audit_anchor()
    assert anchor is not None
    key = log_prefix(tenant) + anchor_path(2)
    original = anchor.get(key).data
    bucket = str(anchored_settings.audit_anchor).removeprefix("s3://")
    full = f"{ANCHOR_BUCKET_CONTAINER}/{key}"
    s3 = s3_client(settings)
    try:
        [version] = s3.list_object_versions(Bucket=bucket, Prefix=full)["Versions"]
        locked = s3.head_object(Bucket=bucket, Key=full, VersionId=version["VersionId"])
        assert locked["ObjectLockMode"] == "COMPLIANCE" and locked["ObjectLockRetainUntilDate"]
        with pytest.raises(ClientError) as refused:
            s3.delete_object(Bucket=bucket, Key=full, VersionId=version["VersionId"])
        assert refused.value.response["Error"]["Code"] == "AccessDenied"
        with pytest.raises(AlreadyExists):
            anchor.put(key, b"forged", if_none_match=True)
        with pytest.raises(InvalidInput):
            anchor.put(key, b"forged")  # the store never writes over
        with pytest.raises(InvalidInput):
            anchor.delete(key)
        # S3 lets a PutObject add a version over a locked one: the original stays, and the rewrite is reported.
        s3.put_object(Bucket=bucket, Key=full, Body=b"forged")
        kept = s3.get_object(Bucket=bucket, Key=full, VersionId=version["VersionId"])["Body"].read()
        assert kept == original
        with pytest.raises(Conflict):
            anchor.get(key)
        _record(service, tenant, "after-the-rewrite")
        result = service.sequence_changes(tenant)  # the sequencer will not build on it, nor call it contention
        assert tenant in result.failed and tenant not in result.contended and service.status(tenant).log_size == 2
        report = service.verify(tenant)
        assert [(p.kind, p.key) for p in report.problems] == [("anchor-unreadable", anchor_path(2))]
        # A delete marker does not hide the key from the anchor's listing either.
        s3.delete_object(Bucket=bucket, Key=full)
        assert key in [item.key for item in anchor.list_all(log_prefix(tenant))]
        assert [p.kind for p in service.verify(tenant).problems] == ["anchor-unreadable"]
        # A bucket without Object Lock is refused as an anchor, with what to do.
        plain = f"plain-{uuid.uuid4().hex[:12]}"
        s3.create_bucket(Bucket=plain)
        unlocked = Stores(anchored_stores.backend, Settings(**{**_settings_dict(settings),
                                                               "audit_anchor": f"s3://{plain}"}))
        with pytest.raises(InvalidInput, match="Object Lock"):
            unlocked.ensure()
    finally:
        s3.close()
