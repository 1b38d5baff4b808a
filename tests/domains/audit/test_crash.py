"""kill -9 of the sequencer process, then recovery, on every backend (issue 11).

Each case makes audited changes in a fresh tenant (object puts through
:class:`ObjectService`, and change records written as a domain writes them), lets
the test process sequence some of them (the checkpoint it then reads is the one a
client saved before the crash), and starts a CHILD PROCESS
(:mod:`tests.domains.audit.crash_child`, a fresh interpreter reaching the same
data directory, Azurite or moto through its environment) that runs
``AuditService.sequence_changes`` and SIGKILLs itself at the case's point: counted
calls, no sleeps and no timing. The points sweep the whole run: after a feed batch
and before its outbox deletes, between the outbox deletes, before the audit entry
rows, before a log write (an entry bundle; a level 1 tile, after a full bundle and
a full tile), right before the checkpoint write (the point the issue names: with
more changes arriving before recovery, for a first append, and for the second of
two appends in one run), and after the checkpoint write before the cursor moves.

The test then checks what the dead process left (the log's size, the object it was
about to write, the feed's counter and pending outbox rows, its lease still held),
and recovers as the next timer run would, in this process with fresh stores: the
dead process's lease is held until it expires, so recovery runs with a clock
injected past the lease's ``until`` (and a run with a clock before it is refused).
After recovery: the feed is gapless (seq 1..n) with each change exactly once in
creation order, no outbox row is left, the log holds exactly the audited changes in
feed order at indices 0..n-1, ``AuditService.verify`` and ``stowage audit verify
--trusted-checkpoint`` pass, and the log is consistent with the checkpoint saved
before the crash and with any checkpoint the dead process committed (consistency
proofs compared with an independent RFC 6962 implementation written here). More
changes after recovery append normally.

Cost: one fresh interpreter per case, and the two large cases write 260 changes
(the first tile boundary is at 256 entries); on moto, whose transactions are slow,
they dominate the file's run time.
"""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cli.main import main as stowage
from shared import names
from shared.config import Settings
from shared.domains.audit import AuditService
from shared.domains.audit import _layout as layout
from shared.domains.audit.models import AuditEntry
from shared.domains.audit.service import log_prefix
from shared.domains.objects.service import ObjectService
from shared.errors import NotFound
from shared.request_context import Actor, RequestContext, acting_as
from shared.storage.changefeed import MAX_RECORDS_PER_BATCH, Change, ChangeRecord
from shared.storage.tlog import TILE_WIDTH, bundle_path, tile_path
from shared.stores import Stores
from tests.domains.audit import crash_child
from tests.emulators import REPO

# --------------------------------------------------------------------------- an independent RFC 6962 (§2.1)


def _mth(entries: list[bytes]) -> bytes:
    n = len(entries)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return hashlib.sha256(b"\x00" + entries[0]).digest()
    k = 1 << ((n - 1).bit_length() - 1)
    return hashlib.sha256(b"\x01" + _mth(entries[:k]) + _mth(entries[k:])).digest()


def _subproof(m: int, entries: list[bytes], complete: bool) -> list[bytes]:
    """RFC 6962 §2.1.2 SUBPROOF(m, D[n], b)."""
    n = len(entries)
    if m == n:
        return [] if complete else [_mth(entries)]
    k = 1 << ((n - 1).bit_length() - 1)
    if m <= k:
        return [*_subproof(m, entries[:k], complete), _mth(entries[k:])]
    return [*_subproof(m - k, entries[k:], False), _mth(entries[:k])]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# --------------------------------------------------------------------------- the cases


@dataclass(frozen=True)
class Crash:
    """Where the child dies, and the log around it."""

    point: str
    k: int
    #: Audited changes sequenced by the test before the child runs (its checkpoint is saved).
    before: int
    #: Changes the child sequences; the third and the last are not audited.
    during: int
    #: Changes made after the kill and before recovery.
    interim: int = 0
    #: The log key (relative to the log's prefix) the child must report being about to write.
    about_to_write: str | None = None
    #: Entries the child committed (a signed checkpoint) before it died.
    committed: int = 0

    @property
    def audited_during(self) -> int:
        return self.during - 2

    @property
    def in_audit_phase(self) -> bool:
        """The child died holding the tenant's lease (after the feed was sequenced)."""
        return self.point not in ("feed-batch", "outbox-delete")


def _small(point: str, k: int, **more: Any) -> Crash:
    """The log grows 5 -> 9 in one append: bundle 000.p/9, tile 0/000.p/9, then the checkpoint."""
    return Crash(point, k, before=5, during=6, **more)


def _large(point: str, k: int, **more: Any) -> Crash:
    """3 -> 258 in a first append (256 changes examined, 255 audited): bundles 000 and 001.p/2, tiles 0/000
    (full), 0/001.p/2 and 1/000.p/1, the checkpoint; then 258 -> 261 in a second append of the same run."""
    return Crash(point, k, before=3, during=260, **more)


CASES = {
    "feed-batch": _small("feed-batch", 1),
    "outbox-delete": _small("outbox-delete", 1),
    "entry-rows": _small("entry-rows", 1),
    "bundle-write": _small("log-write", 1, about_to_write=bundle_path(0, 9)),
    # The point. Changes made before recovery make it append at another size than the dead child did.
    "checkpoint": _small("checkpoint", 1, interim=3, about_to_write="checkpoint"),
    # Create-only first checkpoint; recovery writes the very same bundle and tile again (kept as they are).
    "checkpoint-first-append": Crash("checkpoint", 1, before=0, during=6, about_to_write="checkpoint"),
    "after-checkpoint": _small("after-checkpoint", 1, committed=4),
    # The first append of the run committed (across the first tile boundary), the second did not.
    "large-second-checkpoint": _large("checkpoint", 2, about_to_write="checkpoint", committed=255),
}

# --------------------------------------------------------------------------- making changes

Label = tuple[str, bool]  # (target id, audited)
_BULK_BATCH = 50


def _tenant() -> str:
    return f"kc{uuid.uuid4().hex[:10]}"


def _make_changes(stores: Stores, tenant: str, prefix: str, count: int, *, unaudited: frozenset[int] = frozenset()
                  ) -> list[Label]:
    """``count`` changes in creation order: two object puts (objects table), then change records of the audit
    table's tenant partition written as a domain writes them (``unaudited`` positions not audited)."""
    labels: list[Label] = []
    objects = ObjectService(stores)
    feed, table = stores.changes, stores.table(names.TABLE_AUDIT)
    ops = []
    with acting_as(RequestContext(actor=Actor("agent", "crash-test"), source="http")):
        for i in range(count):
            target = f"{prefix}{i}"
            if i < 2:
                objects.put(tenant, target, f"data {i}".encode(), "text/plain")
                labels.append((target, True))
                continue
            audited = i not in unaudited
            ops.append(feed.outbox_op(tenant, names.TABLE_AUDIT, tenant, ChangeRecord(
                "objects", "objects.put", "object", target, actor={"type": "agent", "id": "crash-test"},
                audited=audited, details={"n": i})))
            labels.append((target, audited))
            if len(ops) == _BULK_BATCH:
                table.batch(ops)
                ops = []
        if ops:
            table.batch(ops)
    return labels


# --------------------------------------------------------------------------- the child process


def _child_environment(settings: Settings) -> dict[str, str]:
    """This process's environment (moto's fake credentials included) with the test's Stowage settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOWAGE_")}
    env[names.SETTING_BACKEND] = settings.backend
    env[names.SETTING_DATA_DIR] = str(settings.data_dir)
    env[names.SETTING_LOCAL_SYNC] = settings.local_synchronous
    optional = {names.SETTING_AZURE_CONNECTION_STRING: settings.azure_connection_string,
                names.SETTING_AUDIT_SIGNING_KEY: settings.audit_signing_key,
                names.SETTING_AUDIT_ANCHOR: settings.audit_anchor}
    if settings.backend == "aws":
        optional.update({names.SETTING_AWS_ENDPOINT_URL: settings.aws_endpoint_url,
                         names.SETTING_AWS_REGION: settings.aws_region, names.SETTING_AWS_BUCKET: settings.aws_bucket,
                         names.SETTING_AWS_TABLE_PREFIX: settings.aws_table_prefix,
                         names.SETTING_AWS_QUEUE_PREFIX: settings.aws_queue_prefix})
    env.update({name: str(value) for name, value in optional.items() if value})
    # The child runs in the test's tmp_path (no local.settings.json of a developer's checkout applies).
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def _kill_child(settings: Settings, tenant: str, crash: Crash, workdir: Path) -> str:
    """Run the sequencer in a child that dies at ``crash``; returns what it reported."""
    command = [sys.executable, "-m", crash_child.__name__, tenant, crash.point, str(crash.k)]
    # The timeout only keeps a hung child from hanging the suite; no outcome depends on time.
    done = subprocess.run(command, cwd=workdir, env=_child_environment(settings), capture_output=True, text=True,
                          timeout=600, check=False)
    assert done.returncode == -9, f"the child was not killed by SIGKILL (exit {done.returncode}):\n{done.stderr}"
    reported = [line for line in done.stderr.splitlines() if line.startswith("killed at ")]
    assert len(reported) == 1, done.stderr
    return reported[0]


# --------------------------------------------------------------------------- checking a log


def _all_changes(service: AuditService, tenant: str) -> list[Change]:
    items: list[Change] = []
    token = None
    while True:
        page = service.changes(tenant, limit=1000, continuation=token)
        items.extend(page.items)
        token = page.continuation
        if token is None:
            return items


def _all_entries(service: AuditService, tenant: str) -> list[AuditEntry]:
    items: list[AuditEntry] = []
    token = None
    while True:
        page = service.entries(tenant, limit=1000, continuation=token)
        items.extend(page.items)
        token = page.continuation
        if token is None:
            return items


def _drain(service: AuditService, tenant: str) -> None:
    for _ in range(20):
        result = service.sequence_changes(tenant)
        assert not result.failed and not result.contended, result
        if result.total == 0:
            return
    raise AssertionError("sequence_changes still had work after 20 runs")


def _check_log(service: AuditService, tenant: str, labels: list[Label], trusted: list[str]) -> None:
    """Every change exactly once in the feed and, if audited, in the log; proofs against ``trusted`` checkpoints."""
    changes = _all_changes(service, tenant)
    assert [c.seq for c in changes] == list(range(1, len(labels) + 1))
    assert [c.target_id for c in changes] == [target for target, _ in labels]
    assert len({c.id for c in changes}) == len(labels)
    status = service.status(tenant)
    assert status.pending == 0 and status.pending_exact, status

    audited = [c for c in changes if c.audited]
    assert len(audited) == sum(1 for _, flag in labels if flag)
    entries = _all_entries(service, tenant)
    assert [e.seq for e in entries] == [c.seq for c in audited]
    assert [e.target["id"] for e in entries] == [c.target_id for c in audited]
    assert [e.index for e in entries] == list(range(len(audited)))
    leaves = [e.entry.encode() for e in entries]
    note = service.checkpoint(tenant)
    assert note.split("\n")[1:3] == [str(len(leaves)), _b64(_mth(leaves))]

    report = service.verify(tenant)
    assert report.ok, report.problems
    for old in trusted:
        old_size, old_root = int(old.split("\n")[1]), old.split("\n")[2]
        assert old_root == _b64(_mth(leaves[:old_size])), "a checkpoint signed earlier is not a prefix of the log"
        proof = service.consistency(tenant, old_size)
        assert (proof.old_root, proof.new_root) == (old_root, _b64(_mth(leaves)))
        assert proof.proof == [_b64(h) for h in _subproof(old_size, leaves, True)]


def _cli_verify(settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                tenant: str, trusted: Path) -> tuple[int, str]:
    for name, value in _child_environment(settings).items():
        if name.startswith("STOWAGE_"):
            monkeypatch.setenv(name, value)
    capsys.readouterr()
    code = stowage(["audit", "verify", "--tenant", tenant, "--trusted-checkpoint", str(trusted)])
    return code, " ".join(capsys.readouterr().out.split())


def _note(stores: Stores, tenant: str) -> str | None:
    try:
        return stores.blobs().get(log_prefix(tenant) + "checkpoint").data.decode()
    except NotFound:
        return None


def _log_size(stores: Stores, tenant: str) -> int:
    note = _note(stores, tenant)
    return int(note.split("\n")[1]) if note else 0


# --------------------------------------------------------------------------- the test


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_kill_9_of_the_sequencer_then_recovery_loses_and_duplicates_nothing(
        case: str, stores: Stores, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    crash = CASES[case]
    tenant = _tenant()
    labels = _make_changes(stores, tenant, "before/", crash.before)
    trusted: list[str] = []
    if crash.before:
        _drain(AuditService(stores), tenant)
        saved = AuditService(stores).checkpoint(tenant)
        assert saved.split("\n")[1] == str(crash.before)
        trusted.append(saved)
    else:
        AuditService(stores).signer()  # the signing key exists before the child (as after any first run)
    labels += _make_changes(stores, tenant, "during/", crash.during, unaudited=frozenset({2, crash.during - 1}))

    workdir = tmp_path / "work"  # not the local backend's data directory
    workdir.mkdir()
    reported = _kill_child(settings, tenant, crash, workdir)

    # What the dead process left.
    assert reported.startswith(f"killed at {crash.point} {crash.k}:"), reported
    prefix, blobs = log_prefix(tenant), stores.blobs()
    if crash.about_to_write is not None:
        assert reported.endswith(f": {crash.about_to_write}"), reported
    if crash.point == "log-write" and crash.about_to_write is not None:
        with pytest.raises(NotFound):
            blobs.head(prefix + crash.about_to_write)
    assert _log_size(stores, tenant) == crash.before + crash.committed
    feed = stores.changes.status(tenant)
    if crash.point == "feed-batch":  # batches 1..k sequenced, the outbox rows of batch k not deleted
        assert feed.newest_seq == crash.before + min(crash.during, crash.k * MAX_RECORDS_PER_BATCH)
        assert feed.pending == crash.during - (crash.k - 1) * MAX_RECORDS_PER_BATCH
    elif crash.point == "outbox-delete":  # all sequenced, one partition's outbox rows deleted, not the other's
        assert feed.newest_seq == crash.before + crash.during
        assert 0 < feed.pending < crash.during
    else:
        assert (feed.newest_seq, feed.pending) == (crash.before + crash.during, 0)
    if crash.point == "checkpoint":  # every tile and bundle of the unsigned size is there
        unsigned = crash.before + crash.audited_during
        assert blobs.head(prefix + bundle_path(unsigned // TILE_WIDTH, unsigned % TILE_WIDTH or TILE_WIDTH))
        assert blobs.head(prefix + tile_path(0, unsigned // TILE_WIDTH, unsigned % TILE_WIDTH or TILE_WIDTH))
    audit_table = stores.table(names.TABLE_AUDIT)
    if crash.point == "after-checkpoint":  # committed, but the cursor still says where the parent left it
        assert int(audit_table.get(tenant, layout.CURSOR_ROW).get("seq")) == crash.before
    committed_note = _note(stores, tenant) if crash.committed else None
    if committed_note is not None:
        trusted.append(committed_note)

    labels += _make_changes(stores, tenant, "interim/", crash.interim)

    # Recovery, as the next timer run in another process: fresh stores; the dead child's lease is still held.
    fresh = Stores.from_settings(settings)
    try:
        if crash.in_audit_phase:
            until = float(audit_table.get(tenant, layout.LEASE_ROW).get("until"))
            refused = AuditService(fresh, clock=lambda: until - 1.0).sequence_changes(tenant)
            assert tenant in refused.contended and not refused.appended
            assert _log_size(stores, tenant) == crash.before + crash.committed

            def clock() -> float:
                return until + 1.0  # the dead child's lease has expired
        else:
            with pytest.raises(NotFound):
                audit_table.get(tenant, layout.LEASE_ROW)

            def clock() -> float:
                return time.time()  # no lease was taken: the real clock decides nothing here
        recovered = AuditService(fresh, clock=clock)
        _drain(recovered, tenant)
        _check_log(recovered, tenant, labels, trusted)
        saved_file = workdir / "trusted-checkpoint.txt"
        saved_file.write_text(trusted[0] if trusted else recovered.checkpoint(tenant))
        code, out = _cli_verify(settings, monkeypatch, capsys, tenant, saved_file)
        assert code == 0 and "OK" in out and "extends the trusted checkpoint" in out, out

        # More changes after recovery append normally, consistent with everything signed so far.
        trusted.append(recovered.checkpoint(tenant))
        labels += _make_changes(stores, tenant, "after/", 4, unaudited=frozenset({3}))
        _drain(recovered, tenant)
        _check_log(recovered, tenant, labels, trusted)
    finally:
        fresh.close()
