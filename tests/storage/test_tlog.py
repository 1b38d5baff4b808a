"""shared.storage.tlog on every backend, checked against independent implementations:

* transparency-dev/merkle's published RFC 6962 vectors (tests/storage/data/transparency-dev-merkle):
  proof verification probes, and the proofs and roots of the RFC 6962 test leaves;
* tlog-scales (a separate tlog-tiles reader, test dependency only): it reads our
  blobs through its own tile paths, bundle parser, signed-note verifier and RFC 6962
  proof construction.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from tlog_scales.reader import TilesReader
from tlog_scales.signing import Vkey
from tlog_scales.tlog import Checkpoint as ScalesCheckpoint

from shared.backends import Backend, BlobStore
from shared.backends.base import Blob, BlobProperties, Page
from shared.errors import BackendUnavailable, InvalidInput
from shared.storage.tlog import (
    EMPTY_ROOT,
    InconsistentCheckpoint,
    Log,
    LogConflict,
    LogCorrupt,
    NoteSigner,
    NoteVerifier,
    anchor_path,
    anchored_size,
    bundle_path,
    encode_bundle,
    leaf_hash,
    parse_checkpoint,
    roots_at,
    sign_checkpoint,
    tile_index_path,
    tile_path,
    verify_consistency,
    verify_inclusion,
    verify_log,
    verify_note,
)
from tests.conftest import Names

DATA = Path(__file__).parent / "data" / "transparency-dev-merkle"
ORIGIN = "example.com/audit/tenant-a"
PREFIX = "tlog/tenant-a/"
SEED = bytes(range(32))


def _b64(text: str | None) -> bytes:
    return base64.b64decode(text or "")


def _vectors(kind: str) -> list[tuple[str, dict[str, object]]]:
    files = sorted((DATA / "testdata" / kind).rglob("*.json"))
    assert len(files) > 50, f"vendored {kind} vectors are missing"
    return [(str(path.relative_to(DATA)), json.loads(path.read_text())) for path in files]


def _go_hex_list(function: str) -> list[bytes]:
    source = (DATA / "constants.go").read_text()
    body = re.search(rf"func {function}\(\)[^{{]*\{{(.*?)\n\}}", source, re.DOTALL)
    assert body is not None
    return [bytes.fromhex(value) for value in re.findall(r'hd\("([0-9a-f]*)"\)', body.group(1))]


RFC_LEAVES = _go_hex_list("LeafInputs")
RFC_ROOTS = [EMPTY_ROOT, *_go_hex_list("RootHashes")]  # RootHashes() starts with EmptyRootHash()


def _entries(count: int, tag: str = "e") -> list[bytes]:
    # Odd lengths, including empty entries, so bundle framing is exercised.
    return [f"{tag}{i}".encode() * (i % 5) for i in range(count)]


def _signer(name: str = ORIGIN, seed: bytes = SEED) -> NoteSigner:
    return NoteSigner(name, seed)


class ScalesBlobs:
    """tlog-scales' TilesBackend over a BlobStore: its own paths, read from our objects."""

    def __init__(self, blobs: BlobStore, prefix: str) -> None:
        self.blobs, self.prefix = blobs, prefix

    def get(self, *path: str) -> bytes | None:
        try:
            return self.blobs.get(self.prefix + "/".join(path)).data
        except Exception:  # noqa: BLE001 - tlog-scales' protocol: None when absent
            return None


def _scales(blobs: BlobStore, signer: NoteSigner, prefix: str = PREFIX) -> TilesReader:
    reader = TilesReader(ScalesBlobs(blobs, prefix))
    checkpoint = reader.get_checkpoint()
    checkpoint.verify(Vkey.from_string(signer.verifier.vkey))  # raises if our note does not verify there
    return reader


# --------------------------------------------------------------------------- vectors (no backend)


@pytest.mark.parametrize(
    ("name", "probe"), _vectors("inclusion"), ids=lambda value: value if isinstance(value, str) else ""
)
def test_inclusion_verification_matches_published_vectors(name: str, probe: dict[str, object]) -> None:
    ok = verify_inclusion(
        _b64(probe["leafHash"]),  # type: ignore[arg-type]
        int(probe["leafIdx"]),  # type: ignore[call-overload]
        int(probe["treeSize"]),  # type: ignore[call-overload]
        [_b64(p) for p in probe["proof"] or []],  # type: ignore[attr-defined]
        _b64(probe["root"]),  # type: ignore[arg-type]
    )
    assert ok is (not probe["wantErr"]), probe["desc"]


@pytest.mark.parametrize(
    ("name", "probe"), _vectors("consistency"), ids=lambda value: value if isinstance(value, str) else ""
)
def test_consistency_verification_matches_published_vectors(name: str, probe: dict[str, object]) -> None:
    ok = verify_consistency(
        int(probe["size1"]),  # type: ignore[call-overload]
        int(probe["size2"]),  # type: ignore[call-overload]
        _b64(probe["root1"]),  # type: ignore[arg-type]
        _b64(probe["root2"]),  # type: ignore[arg-type]
        [_b64(p) for p in probe["proof"] or []],  # type: ignore[attr-defined]
    )
    assert ok is (not probe["wantErr"]), probe["desc"]


def test_tile_paths_follow_c2sp() -> None:
    assert tile_index_path(0) == "000"
    assert tile_index_path(1234067) == "x001/x234/067"
    assert tile_index_path(1000) == "x001/000"
    assert tile_path(0, 5) == "tile/0/005"
    assert tile_path(2, 1234067, 17) == "tile/2/x001/x234/067.p/17"
    assert bundle_path(1, 44) == "tile/entries/001.p/44"
    with pytest.raises(InvalidInput):
        tile_path(0, 0, 0)  # empty tiles are never served


def test_signed_note_example_from_the_spec_verifies() -> None:
    verifier = NoteVerifier.from_vkey("example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k")
    note = (
        "This is an example message.\n\n"
        "\u2014 example.com/foo Uw2QOkn8srV1yJGh2VYRlL1Tnagv1YEq6TfXppzi2ONncAlTgK7Ztg1ERYNZXsYjOBH3mFXmRKuwHjG1Yu72IneyaQM=\n"
    )
    text, verified = verify_note(note, [verifier])
    assert text == "This is an example message.\n" and verified == [verifier]
    with pytest.raises(InvalidInput):
        verify_note(note.replace("example message", "example massage"), [verifier])
    with pytest.raises(InvalidInput):  # only unknown keys signed it
        verify_note(note, [_signer("example.com/foo").verifier])


def test_signer_refuses_inconsistent_checkpoints() -> None:
    signer = _signer()
    previous = parse_checkpoint(
        sign_checkpoint(signer, ORIGIN, 4, RFC_ROOTS[4], previous=None, proof=[]), ORIGIN, [signer.verifier]
    )
    proof_4_8 = [bytes.fromhex(h) for h in ("6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",)]
    good = sign_checkpoint(signer, ORIGIN, 8, RFC_ROOTS[8], previous=previous, proof=proof_4_8)
    assert parse_checkpoint(good, ORIGIN, [signer.verifier]).size == 8
    with pytest.raises(InconsistentCheckpoint):  # a fork: same size, another root
        sign_checkpoint(signer, ORIGIN, 4, RFC_ROOTS[3], previous=previous, proof=[])
    with pytest.raises(InconsistentCheckpoint):  # a shrink
        sign_checkpoint(signer, ORIGIN, 3, RFC_ROOTS[3], previous=previous, proof=[])
    with pytest.raises(InconsistentCheckpoint):  # a bigger tree that does not contain the old one
        sign_checkpoint(signer, ORIGIN, 8, RFC_ROOTS[7], previous=previous, proof=proof_4_8)


# --------------------------------------------------------------------------- on every backend


def test_rfc6962_leaves_give_the_published_roots_and_proofs(blobs: BlobStore) -> None:
    log = Log(blobs, PREFIX, ORIGIN, _signer())
    assert log.checkpoint().root == EMPTY_ROOT
    for size, batch in ((1, RFC_LEAVES[:1]), (3, RFC_LEAVES[1:3]), (8, RFC_LEAVES[3:])):
        assert log.append(batch).root == RFC_ROOTS[size]
    for size in range(1, 9):
        assert log.root(size) == RFC_ROOTS[size]
    for name, probe in _vectors("inclusion"):
        if probe["desc"] == "happy path" and "/additional/" not in name and "single-entry" not in name:
            index, size = int(probe["leafIdx"]), int(probe["treeSize"])  # type: ignore[call-overload]
            assert log.inclusion_proof(index, size) == [_b64(p) for p in probe["proof"] or []], name  # type: ignore[attr-defined]
    for name, probe in _vectors("consistency"):
        if probe["desc"] == "happy path":
            old, new = int(probe["size1"]), int(probe["size2"])  # type: ignore[call-overload]
            assert log.consistency_proof(old, new) == [_b64(p) for p in probe["proof"] or []], name  # type: ignore[attr-defined]


def test_batches_across_tile_boundaries_match_an_independent_reader(blobs: BlobStore) -> None:
    signer = _signer()
    log = Log(blobs, PREFIX, ORIGIN, signer)
    entries: list[bytes] = []
    checkpoints: list[tuple[int, bytes]] = []
    for count in (1, 255, 2, 300):
        batch = _entries(count, f"b{count}-")
        result = log.append(batch)
        assert result.first_index == len(entries)
        entries += batch
        assert result.size == len(entries)
        scales = _scales(blobs, signer)
        assert scales.size == len(entries)
        assert result.root == scales.calculate_root_hash() == log.checkpoint().root
        checkpoints.append((result.size, result.root))
    assert list(log.entries()) == entries
    assert [log.entry(i) for i in (0, 255, 256, 257, 511, 512, 557)] == [
        entries[i] for i in (0, 255, 256, 257, 511, 512, 557)
    ]
    assert scales.get_entry(300) == entries[300]
    keys = {p.key[len(PREFIX) :] for p in blobs.list_all(PREFIX)}
    assert {
        "checkpoint",
        "tile/0/000",
        "tile/0/001",
        "tile/0/002.p/46",
        "tile/1/000.p/2",
        "tile/entries/000",
        "tile/entries/001",
        "tile/entries/002.p/46",
    } <= keys
    assert "tile/1/000.p/1" in keys and "tile/0/000.p/1" in keys  # earlier sizes' partial tiles stay

    size, root = len(entries), log.checkpoint().root
    for index in (0, 1, 2, 127, 255, 256, 257, 300, 511, 512, 557):
        for tree in sorted({index + 1, 256, 258, 513, size} - set(range(index + 1))):
            proof = log.inclusion_proof(index, tree)
            assert proof == scales.get_inclusion_proof(index, tree).node_hashes
            tree_root = scales.mth(0, tree)
            assert verify_inclusion(leaf_hash(entries[index]), index, tree, proof, tree_root)
            assert not verify_inclusion(leaf_hash(entries[index] + b"x"), index, tree, proof, tree_root)
    for old, root_old in [
        (1, checkpoints[0][1]),
        (256, checkpoints[1][1]),
        (258, checkpoints[2][1]),
        (100, None),
        (513, None),
    ]:
        proof = log.consistency_proof(old, size)
        independent = scales.get_consistency_proof(old, size)
        assert proof == independent.node_hashes
        old_root = root_old or scales.mth(0, old)
        independent.check(old_root, root)  # tlog-scales' verifier accepts our proof
        assert verify_consistency(old, size, old_root, root, proof)
        assert not verify_consistency(old, size, old_root, scales.mth(0, size - 1), proof)


@pytest.fixture
def built(blobs: BlobStore) -> tuple[Log, list[bytes], str]:
    """A log of 300 entries committed in two appends; the checkpoint of the first, as text."""
    log = Log(blobs, PREFIX, ORIGIN, _signer())
    entries = _entries(300)
    first = log.append(entries[:260]).checkpoint
    log.append(entries[260:])
    return log, entries, first


def _flip(blobs: BlobStore, key: str, offset: int) -> None:
    data = bytearray(blobs.get(PREFIX + key).data)
    data[offset] ^= 0x01
    blobs.put(PREFIX + key, bytes(data))


def _verify(log: Log, trusted: str | None = None) -> set[str]:
    return verify_log(log.blobs, PREFIX, ORIGIN, log.verifiers, trusted=trusted).kinds()


def _proves(log: Log, entries: list[bytes], index: int) -> bool:
    """Whether entry ``index`` as the caller knows it is proven in the signed tree, from what is stored."""
    checkpoint = log.checkpoint()
    try:
        proof = log.inclusion_proof(index)
    except LogCorrupt:
        return False
    return verify_inclusion(leaf_hash(entries[index]), index, checkpoint.size, proof, checkpoint.root)


def test_an_intact_log_verifies(built: tuple[Log, list[bytes], str]) -> None:
    log, entries, first = built
    report = verify_log(log.blobs, PREFIX, ORIGIN, log.verifiers, trusted=first)
    assert report.ok, report.problems
    assert report.size == 300 and report.root == log.checkpoint().root
    assert all(_proves(log, entries, i) for i in (0, 4, 259, 299))


def test_tamper_with_a_tile_is_detected(built: tuple[Log, list[bytes], str]) -> None:
    log, entries, _ = built
    _flip(log.blobs, "tile/0/000", 5 * 32)  # leaf hash of entry 5
    assert "entry-hash" in _verify(log)
    assert not _proves(log, entries, 4)  # 5 is entry 4's sibling


def test_tamper_with_an_upper_tile_is_detected(built: tuple[Log, list[bytes], str]) -> None:
    log, entries, _ = built
    _flip(log.blobs, "tile/1/000.p/1", 0)
    assert "tile-hash" in _verify(log)
    assert not _proves(log, entries, 299)


def test_tamper_with_an_entry_bundle_is_detected(built: tuple[Log, list[bytes], str]) -> None:
    log, entries, _ = built
    data = log.blobs.get(PREFIX + "tile/entries/001.p/44").data
    offset = 2 + len(entries[256]) + 2  # inside entry 257's bytes (length 1 mod 5: non-empty)
    assert entries[257]
    _flip(log.blobs, "tile/entries/001.p/44", offset)
    assert log.blobs.get(PREFIX + "tile/entries/001.p/44").data != data
    assert _verify(log) == {"entry-hash", "root-mismatch"}  # the entries no longer give the signed root
    assert not verify_inclusion(leaf_hash(log.entry(257)), 257, 300, log.inclusion_proof(257), log.checkpoint().root)


@pytest.mark.parametrize("where", ["body", "signature"])
def test_tamper_with_the_checkpoint_is_detected(built: tuple[Log, list[bytes], str], where: str) -> None:
    log, _, _ = built
    note = log.blobs.get(PREFIX + "checkpoint").data.decode()
    if where == "body":
        changed = note.replace("\n300\n", "\n301\n")
    else:
        line = note.rstrip("\n").rsplit("\n", 1)[1]
        signature = bytearray(base64.b64decode(line.split(" ")[2]))
        signature[10] ^= 0x01
        changed = note.replace(line.split(" ")[2], base64.b64encode(bytes(signature)).decode())
    assert changed != note
    log.blobs.put(PREFIX + "checkpoint", changed.encode())
    assert _verify(log) == {"checkpoint-invalid"}
    with pytest.raises(LogCorrupt):
        log.checkpoint()
    with pytest.raises(LogCorrupt):
        log.inclusion_proof(0)


@pytest.mark.parametrize("key", ["tile/entries/001.p/44", "tile/0/001.p/44", "tile/1/000.p/1"])
def test_truncation_is_detected(built: tuple[Log, list[bytes], str], key: str) -> None:
    log, entries, _ = built
    log.blobs.delete(PREFIX + key)
    kinds = _verify(log)
    assert kinds & {"bundle-missing", "tile-missing"}, kinds
    if key.startswith("tile/entries"):
        with pytest.raises(LogCorrupt):
            log.entry(299)
    else:
        assert not _proves(log, entries, 299)


def test_rolling_the_checkpoint_back_is_detected(built: tuple[Log, list[bytes], str]) -> None:
    log, _, first = built
    latest = log.checkpoint().note
    log.blobs.put(PREFIX + "checkpoint", first.encode())
    assert _verify(log) == set()  # a valid log of 260 on its own...
    assert _verify(log, trusted=latest) == {"inconsistent"}  # ...but not to whoever saw 300
    with pytest.raises(InvalidInput):
        log.inclusion_proof(299)


def test_reordering_two_entries_is_detected(built: tuple[Log, list[bytes], str]) -> None:
    log, entries, _ = built
    swapped = entries[:256]
    swapped[11], swapped[12] = swapped[12], swapped[11]
    assert swapped[11] != swapped[12]
    log.blobs.put(PREFIX + "tile/entries/000", encode_bundle(swapped))
    report = verify_log(log.blobs, PREFIX, ORIGIN, log.verifiers)
    assert report.kinds() == {"entry-hash", "tile-hash", "root-mismatch"}  # level 1 is recomputed from the entries
    assert sorted(p.detail.split()[1] for p in report.problems if p.kind == "entry-hash") == ["11", "12"]
    assert not verify_inclusion(leaf_hash(log.entry(11)), 11, 300, log.inclusion_proof(11), log.checkpoint().root)


def test_a_fork_signed_by_the_same_key_is_detected(built: tuple[Log, list[bytes], str], blobs: BlobStore) -> None:
    log, _, _ = built
    fork = Log(blobs, "tlog/fork/", ORIGIN, _signer())
    fork.append(_entries(300, "other"))
    genuine, forked = log.checkpoint(), fork.checkpoint()
    assert genuine.size == forked.size and genuine.root != forked.root
    # A verifier who saw either checkpoint rejects the other log.
    assert verify_log(blobs, "tlog/fork/", ORIGIN, log.verifiers, trusted=genuine.note).kinds() == {"inconsistent"}
    assert _verify(log, trusted=forked.note) == {"inconsistent"}
    # No consistency proof can join them, and the log's signer will not sign the other root.
    assert not verify_consistency(300, 300, genuine.root, forked.root, [])
    assert not verify_consistency(260, 300, log.root(260), forked.root, log.consistency_proof(260))
    with pytest.raises(InconsistentCheckpoint):
        sign_checkpoint(_signer(), ORIGIN, 300, forked.root, previous=genuine, proof=[])
    # The forked checkpoint placed over the genuine tiles does not match them.
    blobs.put(PREFIX + "checkpoint", forked.note.encode())
    assert _verify(log) == {"root-mismatch"}


def test_the_signer_refuses_to_extend_a_tampered_tree(built: tuple[Log, list[bytes], str]) -> None:
    log, _, _ = built
    before = log.blobs.get(PREFIX + "checkpoint").data
    _flip(log.blobs, "tile/0/001.p/44", 0)  # the right edge the next append builds on
    with pytest.raises(InconsistentCheckpoint):
        log.append([b"next"])
    assert log.blobs.get(PREFIX + "checkpoint").data == before


# --------------------------------------------------------------------------- crashes and races


class Wrapped(BlobStore):
    """The real BlobStore, with a hook run before each put (to fail or hold the checkpoint write)."""

    def __init__(
        self, inner: BlobStore, before_put: Callable[[str, bytes], None], after_put: Callable[[str], None] | None = None
    ) -> None:
        super().__init__(inner.container)
        self.inner, self.before_put, self.after_put = inner, before_put, after_put

    def _put(
        self,
        key: str,
        data: bytes,
        content_type: str,
        metadata: dict[str, str],
        if_match: str | None,
        if_none_match: bool,
    ) -> BlobProperties:
        self.before_put(key, data)
        props = self.inner._put(key, data, content_type, metadata, if_match, if_none_match)
        if self.after_put is not None:
            self.after_put(key)
        return props

    def _get(self, key: str) -> Blob:
        return self.inner._get(key)

    def _head(self, key: str) -> BlobProperties:
        return self.inner._head(key)

    def _delete(self, key: str, if_match: str | None) -> None:
        self.inner._delete(key, if_match)

    def _list(self, prefix: str, limit: int, continuation: str | None) -> Page[BlobProperties]:
        return self.inner._list(prefix, limit, continuation)


def test_a_crash_before_the_checkpoint_loses_and_duplicates_nothing(blobs: BlobStore) -> None:
    signer = _signer()
    crash = {"on": False}

    def before_put(key: str, data: bytes) -> None:
        if crash["on"] and key.endswith("/checkpoint"):
            raise BackendUnavailable("simulated crash before the checkpoint write")

    log = Log(Wrapped(blobs, before_put), PREFIX, ORIGIN, signer)
    committed = _entries(250, "c")
    log.append(committed)
    crashed = _entries(10, "x")  # crosses the first tile boundary: writes full tiles and a level 1 tile
    crash["on"] = True
    with pytest.raises(BackendUnavailable):
        log.append(crashed)
    crash["on"] = False
    assert log.checkpoint().size == 250
    assert blobs.exists(PREFIX + "tile/0/000") and blobs.exists(PREFIX + "tile/entries/000")  # left behind
    assert verify_log(blobs, PREFIX, ORIGIN, [signer.verifier]).ok

    # Another append over the leftovers (different entries at the same places), then the retry.
    other = _entries(20, "y")
    assert Log(blobs, PREFIX, ORIGIN, signer).append(other).first_index == 250
    assert log.append(crashed).first_index == 270
    assert list(log.entries()) == committed + other + crashed
    report = verify_log(blobs, PREFIX, ORIGIN, [signer.verifier])
    assert report.ok and report.size == 280, report.problems
    assert _scales(blobs, signer).calculate_root_hash() == log.checkpoint().root


def test_a_checkpoint_write_that_landed_but_failed_is_not_repeated(blobs: BlobStore) -> None:
    signer = _signer()
    fail_after = {"on": False}

    def after_put(key: str) -> None:
        if fail_after["on"] and key.endswith("/checkpoint"):
            raise BackendUnavailable("simulated lost response")

    log = Log(Wrapped(blobs, lambda key, data: None, after_put), PREFIX, ORIGIN, signer)
    log.append(_entries(3))
    fail_after["on"] = True
    result = log.append(_entries(4, "z"))  # the store wrote it: the append succeeded
    assert result.size == 7 and log.checkpoint().size == 7


def test_two_writers_racing_on_the_checkpoint(blobs: BlobStore) -> None:
    signer = _signer()
    Log(blobs, PREFIX, ORIGIN, signer).append(_entries(100, "base"))
    gate = threading.Barrier(2, timeout=60)

    def before_put(key: str, data: bytes) -> None:
        if key.endswith("/checkpoint"):
            gate.wait()  # both writers have read the checkpoint and written their tiles

    outcomes: dict[str, object] = {}
    batches = {"a": _entries(5, "a"), "b": _entries(5, "b")}  # same size: the same partial tile paths

    def writer(name: str) -> None:
        try:
            outcomes[name] = Log(Wrapped(blobs, before_put), PREFIX, ORIGIN, signer).append(batches[name])
        except Exception as exc:  # noqa: BLE001 - inspected below
            outcomes[name] = exc

    threads = [threading.Thread(target=writer, args=(name,)) for name in batches]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    conflicts = [name for name, value in outcomes.items() if isinstance(value, LogConflict)]
    winners = [name for name, value in outcomes.items() if not isinstance(value, BaseException)]
    assert len(conflicts) == 1 and len(winners) == 1, outcomes
    log = Log(blobs, PREFIX, ORIGIN, signer)
    assert log.checkpoint().size == 105
    assert list(log.entries(100)) == batches[winners[0]]
    report = verify_log(blobs, PREFIX, ORIGIN, [signer.verifier])
    assert report.ok, report.problems
    # The loser appends again, after the winner.
    assert log.append(batches[conflicts[0]]).first_index == 105


def test_keys_rotate(blobs: BlobStore) -> None:
    old, new = _signer(seed=b"\x01" * 32), _signer(seed=b"\x02" * 32)
    assert old.key_id != new.key_id
    Log(blobs, PREFIX, ORIGIN, old).append([b"one"])
    rotated = Log(blobs, PREFIX, ORIGIN, new, verifiers=[old.verifier])
    assert rotated.checkpoint().signed_by == (ORIGIN,)
    rotated.append([b"two"])
    reader = Log(blobs, PREFIX, ORIGIN, None, verifiers={ORIGIN: new.verifier})
    assert list(reader.entries()) == [b"one", b"two"]
    with pytest.raises(LogCorrupt):  # a reader trusting only the retired key rejects the new checkpoint
        Log(blobs, PREFIX, ORIGIN, None, verifiers=[old.verifier]).checkpoint()
    with pytest.raises(InvalidInput):
        reader.append([b"three"])  # no signer: read-only
    assert ScalesCheckpoint.from_text(reader.checkpoint().note).size == 2


def test_bad_input(blobs: BlobStore) -> None:
    log = Log(blobs, PREFIX, ORIGIN, _signer())
    with pytest.raises(InvalidInput):
        log.append([b"x" * 65536])
    with pytest.raises(InvalidInput):
        log.append(["text"])  # type: ignore[list-item]
    log.append([b"a", b"b"])
    with pytest.raises(InvalidInput):
        log.inclusion_proof(2, 2)
    with pytest.raises(InvalidInput):
        log.consistency_proof(1, 3)
    assert log.append([]).size == 2


# --------------------------------------------------------------------------- anchoring


def _independent_mth(hashes: list[bytes]) -> bytes:
    """RFC 6962 MTH over leaf hashes, by the RFC's recursion."""
    if len(hashes) == 1:
        return hashes[0]
    k = 1 << ((len(hashes) - 1).bit_length() - 1)
    return hashlib.sha256(b"\x01" + _independent_mth(hashes[:k]) + _independent_mth(hashes[k:])).digest()


def test_anchor_keys_name_their_size_and_list_newest_first() -> None:
    sizes = [1, 9, 10, 255, 256, 1000, 10**12, 10**20 - 1]
    keys = [anchor_path(size) for size in sizes]
    assert [anchored_size(key) for key in keys] == sizes
    assert sorted(keys) == list(reversed(keys))  # key order is newest first
    assert all(re.fullmatch(r"anchor/\d{20}", key) for key in keys)
    for bad in (0, -1, 10**20):
        with pytest.raises(InvalidInput):
            anchor_path(bad)
    assert [anchored_size(k) for k in ("checkpoint", "anchor/123", "anchor/" + "9" * 20, "anchor/x" * 2)] == [None] * 4


def test_roots_at_many_sizes_in_one_pass_match_the_rfc() -> None:
    hashes = [leaf_hash(entry) for entry in _entries(70)]
    sizes = [70, 1, 2, 3, 8, 13, 64, 65, 0, 71]
    roots = roots_at(hashes, sizes)
    assert sorted(roots) == [1, 2, 3, 8, 13, 64, 65, 70]  # 0 and beyond the hashes are not roots
    assert all(root == _independent_mth(hashes[:size]) for size, root in roots.items())


def test_every_checkpoint_is_anchored_and_verify_holds_the_log_to_each(backend: Backend, names: Names) -> None:
    anchor_container = names.container + "-anchor"
    backend.ensure(containers=[names.container, anchor_container])
    blobs, anchor = backend.blobs(names.container), backend.blobs(anchor_container)
    log = Log(blobs, PREFIX, ORIGIN, _signer(), anchor=anchor)
    entries = _entries(301)
    notes = [log.append(entries[:5]).checkpoint, log.append(entries[5:300]).checkpoint,
             log.append(entries[300:]).checkpoint]
    listed = [item.key for item in anchor.list_all(PREFIX)]
    assert listed == [PREFIX + anchor_path(size) for size in (301, 300, 5)]  # newest first, nothing else
    assert [anchor.get(key).data.decode() for key in reversed(listed)] == notes
    assert log.newest_anchored() == 301 and log.is_anchored(300) and not log.is_anchored(299)
    report = verify_log(blobs, PREFIX, ORIGIN, log.verifiers, anchor=anchor)
    assert report.ok and (report.anchored, report.anchored_size) == (3, 301), report.problems
    assert log.anchor_checkpoint() == log.checkpoint()  # idempotent

    # A primary rolled back to size 300 (validly signed) is short of the newest anchor.
    blobs.put(PREFIX + "checkpoint", notes[1].encode())
    assert verify_log(blobs, PREFIX, ORIGIN, log.verifiers).ok  # the primary alone cannot tell
    report = verify_log(blobs, PREFIX, ORIGIN, log.verifiers, anchor=anchor)
    assert [(p.kind, p.key) for p in report.problems] == [("anchor-inconsistent", anchor_path(301))]
    blobs.put(PREFIX + "checkpoint", notes[2].encode())

    # A fork of the same size signed with the same key, copied over the primary: off every anchored tree.
    fork = Log(blobs, "tlog/fork/", ORIGIN, _signer())
    fork.append(_entries(301, "other"))
    for item in list(blobs.list_all("tlog/fork/")):
        blobs.put(PREFIX + item.key.removeprefix("tlog/fork/"), blobs.get(item.key).data)
    assert verify_log(blobs, PREFIX, ORIGIN, log.verifiers).ok
    report = verify_log(blobs, PREFIX, ORIGIN, log.verifiers, anchor=anchor)
    assert {(p.kind, p.key) for p in report.problems} == {
        ("anchor-inconsistent", anchor_path(size)) for size in (5, 300, 301)}
    # The writer will not anchor (nor build on) the forked checkpoint: the anchor holds another root there.
    with pytest.raises(LogCorrupt, match="rewritten"):
        log.anchor_checkpoint()


def test_a_bad_anchored_note_is_reported(backend: Backend, names: Names) -> None:
    anchor_container = names.container + "-anchor"
    backend.ensure(containers=[names.container, anchor_container])
    blobs, anchor = backend.blobs(names.container), backend.blobs(anchor_container)
    log = Log(blobs, PREFIX, ORIGIN, _signer(), anchor=anchor)
    log.append(_entries(3))
    stranger = NoteSigner.generate("example.com/other")
    other = Log(blobs, "tlog/other/", ORIGIN, stranger)
    other.append(_entries(4))
    anchor.put(PREFIX + anchor_path(4), other.checkpoint().note.encode())  # signed by an unknown key
    anchor.put(PREFIX + anchor_path(2), log.checkpoint().note.encode())  # size 3 under the key of size 2
    anchor.put(PREFIX + "anchor/junk", b"x")
    report = verify_log(blobs, PREFIX, ORIGIN, log.verifiers, anchor=anchor)
    assert sorted((p.kind, p.key) for p in report.problems) == [
        ("anchor-invalid", anchor_path(4)), ("anchor-invalid", anchor_path(2)), ("anchor-invalid", "anchor/junk")]
    assert report.anchored == 1 and report.anchored_size == 4
