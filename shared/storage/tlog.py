"""A tamper-evident append-only log: an RFC 6962 Merkle tree stored as C2SP tlog-tiles in a BlobStore.

Specifications followed (texts as of C2SP commit 5ba5ee8, July 2026):

* RFC 6962 §2.1 (and RFC 9162 §2.1): SHA-256 Merkle Tree Hash, leaf hash
  ``H(0x00 || entry)``, interior node ``H(0x01 || left || right)``, the empty tree
  ``H()``; audit paths (PATH) and consistency proofs (PROOF/SUBPROOF) as defined in
  §2.1.1 and §2.1.2; their verification as in RFC 9162 §2.1.3.2 and §2.1.4.2.
* C2SP tlog-tiles (https://c2sp.org/tlog-tiles): the layout below.
* C2SP tlog-checkpoint (https://c2sp.org/tlog-checkpoint): the checkpoint note text
  ``<origin>\\n<tree size>\\n<base64 root hash>\\n``.
* C2SP signed-note (https://c2sp.org/signed-note): signature lines
  ``— <key name> <base64(key ID || signature)>`` after a blank line; Ed25519 keys
  (signature type 0x01) with key ID = ``SHA-256(key name || 0x0A || 0x01 || public key)[:4]``.

Layout, under one log's ``prefix`` (e.g. ``tlog/<tenant>/``)::

    checkpoint                      the signed checkpoint (text/plain; charset=utf-8), mutable
    tile/<L>/<N>                    full tile: 256 hashes (8,192 bytes) at level L, immutable
    tile/<L>/<N>.p/<W>              partial tile of width W (1..255)
    tile/entries/<N>                full entry bundle: 256 entries, each a big-endian uint16
                                    length then the entry bytes
    tile/entries/<N>.p/<W>          partial entry bundle of W entries

``<N>`` is written in zero-padded 3-digit path elements, all but the last prefixed
with ``x`` (1234067 -> ``x001/x234/067``). Tiles have height 8: the hashes of a level 0
tile are leaf hashes; a hash of a level L tile is the Merkle Tree Hash of 256**L
consecutive entries, i.e. of one full tile at level L-1. A tree of size s has, at
level L, ``s // 256**(L+1)`` full tiles and, when ``(s // 256**L) % 256`` is not zero,
one partial tile of that width. Partial tiles and bundles of earlier sizes are kept
(their paths differ by width), so the tiles for every checkpoint ever produced stay
readable.

Writing (:meth:`Log.append`). One writer at a time is assumed (the sequencer above
holds a lease); the checkpoint's ETag keeps a second one from committing. An append:

1. reads and verifies the current checkpoint (size s, root r) and its ETag;
2. reads the right edge of the tree for size s (the partial tiles and bundle), and
   writes the new entry bundles and tiles, bottom-up. Full tiles and bundles are
   written create-only. One that already exists lies beyond the signed size (a
   crashed or losing writer left it), so it is not trusted: identical bytes are
   kept; different bytes are overwritten, conditional on the ETag just read, after
   checking that the checkpoint has not moved (if it has, another writer committed
   and the append stops with :class:`LogConflict`);
3. checks the new tree is consistent with the checkpoint it read (a consistency
   proof computed from the tiles just written, verified against r) and only then
   signs (:func:`sign_checkpoint` refuses otherwise: :class:`InconsistentCheckpoint`);
4. writes the checkpoint LAST, conditional on the ETag read in 1 (create-only for
   the first). A lost race is :class:`LogConflict` and nothing was signed over the
   winner's tree;
5. after the commit, checks the objects it wrote still carry the ETags its writes
   returned, and writes back any that a losing writer replaced meanwhile;
6. with an anchor store, writes the new checkpoint there (see Anchoring below).

Guarantees: every checkpoint ever written extends the one it replaced (never a
fork, never a shrink); the entries, tiles and bundles a checkpoint covers are there
before it is written; a committed entry keeps its index forever. Readers use only
the checkpoint and what it covers; nothing beyond the signed size is trusted.

Crash behaviour: a crash before step 4 leaves the checkpoint unchanged and possibly
some tiles and bundles beyond its size; the appended entries are not in the log
(the caller did not get an :class:`AppendResult`) and must be appended again; the
next append overwrites whatever the crash left that differs. If the checkpoint
write itself fails ambiguously (the store did not answer), the checkpoint is read
back: if it is the one we signed the append succeeded, so a retry never duplicates.
The only way to lose integrity is two writers at once where one stalls for longer
than the other's whole append between step 2's checkpoint check and its overwrite;
the lease rules that out, and :func:`verify_log` reports it if it ever happens.

Anchoring (optional: a :class:`Log` given an ``anchor`` store). Someone who can
write the primary store (and holds the signing key) can replace the whole log by a
validly signed other one: a fork of the same size, or an older, shorter tree. An
anchor is a second store, ideally write-once (an S3 bucket with Object Lock, a
container with an immutability policy), that keeps every checkpoint the log
signed, under the same ``prefix``::

    anchor/<10**20 - 1 - size, 20 digits>    the signed note of that size, create-only

One immutable key per size, and nothing mutable beside it (no "latest" pointer an
attacker could move): the keys count down, so a listing in key order starts with the
newest. Step 6 of an append writes the new note there (:meth:`Log.anchor_checkpoint`),
create-only; a note already there with the same body (origin, size, root) is kept
(a retry, or a rotated key's signature), one with another body is
:class:`LogCorrupt`: the log was rewritten after that size was anchored.
Crash behaviour: a crash (or a failed anchor write) after step 4 leaves the new
checkpoint committed but not anchored; the append's caller sees an error although
the entries are in the log (a retry finds them there). A writer heals that by
calling :meth:`Log.anchor_checkpoint` (no argument: the current checkpoint) before
its next append, as the audit sequencer does on every run; it also learns there, by
:class:`LogCorrupt`, that the current checkpoint is off the anchored one, before it
builds on it. Only a checkpoint replaced before anyone healed it would never be
anchored. An anchor behind the log is therefore normal for a moment; an anchor ahead
of it, or off its tree, never is.

Verifying (:func:`verify_log`): reads every bundle and tile the checkpoint covers,
recomputes every leaf hash from the entries and every tile from the level below,
recomputes the root, checks the checkpoint's signature and, given a trusted
checkpoint saved earlier, that the current tree extends it. Given the anchor store,
every anchored note must verify and name the size of its key, and the log must
extend each one: its size at most the log's, and the root of the first ``size``
entries recomputed from the bundles equal to its root. That catches a primary
rewritten, truncated or forked since, even when re-signed with the log's key. Every
problem found is reported, not just the first. It holds 32 bytes per entry in memory,
and reads every anchored note.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from shared.backends.base import BlobStore
from shared.errors import (
    AlreadyExists,
    BackendUnavailable,
    Conflict,
    InvalidInput,
    NotFound,
    PreconditionFailed,
    StowageError,
)

HASH_SIZE = 32
TILE_HEIGHT = 8
TILE_WIDTH = 1 << TILE_HEIGHT  # 256 hashes or entries
MAX_ENTRY_BYTES = 0xFFFF  # the bundle's uint16 length prefix
EMPTY_ROOT = hashlib.sha256(b"").digest()
CHECKPOINT_CONTENT_TYPE = "text/plain; charset=utf-8"
TILE_CONTENT_TYPE = "application/octet-stream"
#: Signatures read from one note at most (signed-note: verifiers MUST accept at least 16).
MAX_NOTE_SIGNATURES = 64
MAX_CHECKPOINT_BYTES = 64 * 1024
ED25519_SIGNATURE_TYPE = 0x01
_EM_DASH = "\u2014"


# --------------------------------------------------------------------------- errors


class LogConflict(Conflict):
    """Another writer committed a checkpoint first; this append wrote no checkpoint. Read and try again."""

    title = "Log changed concurrently"


class InconsistentCheckpoint(Conflict):
    """The checkpoint asked for does not extend the last one signed: it was not signed."""

    title = "Inconsistent checkpoint"


class LogCorrupt(StowageError):
    """What the store holds is not a valid log: a bad checkpoint, signature, tile or bundle."""

    status = 500
    title = "Transparency log corrupt"


# --------------------------------------------------------------------------- hashing (RFC 6962 §2.1)


def leaf_hash(entry: bytes) -> bytes:
    """RFC 6962 leaf hash: SHA-256(0x00 || entry)."""
    return hashlib.sha256(b"\x00" + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 6962 interior node hash: SHA-256(0x01 || left || right)."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two smaller than n (n > 1): RFC 6962's k."""
    return 1 << ((n - 1).bit_length() - 1)


def root_from_leaf_hashes(hashes: Sequence[bytes]) -> bytes:
    """MTH over leaf hashes: the perfect subtrees of the binary decomposition, folded right to left."""
    stack: list[tuple[int, bytes]] = []  # (size, hash) of perfect subtrees, sizes strictly decreasing
    for value in hashes:
        size, current = 1, value
        while stack and stack[-1][0] == size:
            left_size, left = stack.pop()
            size, current = left_size + size, node_hash(left, current)
        stack.append((size, current))
    if not stack:
        return EMPTY_ROOT
    root = stack[-1][1]
    for _, left in reversed(stack[:-1]):
        root = node_hash(left, root)
    return root


# --------------------------------------------------------------------------- layout (C2SP tlog-tiles)


def tile_index_path(n: int) -> str:
    """``<N>`` of a tile path: zero-padded 3-digit elements, all but the last prefixed with x."""
    if n < 0:
        raise InvalidInput("a tile index cannot be negative")
    elements = [f"{n % 1000:03d}"]
    n //= 1000
    while n > 0:
        elements.append(f"x{n % 1000:03d}")
        n //= 1000
    return "/".join(reversed(elements))


def _suffix(width: int) -> str:
    if not 1 <= width <= TILE_WIDTH:
        raise InvalidInput(f"a tile is 1 to {TILE_WIDTH} wide, not {width}")
    return "" if width == TILE_WIDTH else f".p/{width}"


def tile_path(level: int, n: int, width: int = TILE_WIDTH) -> str:
    """``tile/<L>/<N>[.p/<W>]`` (relative to the log's prefix)."""
    if not 0 <= level <= 63:
        raise InvalidInput(f"tile level {level} is not from 0 to 63")
    return f"tile/{level}/{tile_index_path(n)}{_suffix(width)}"


def bundle_path(n: int, width: int = TILE_WIDTH) -> str:
    """``tile/entries/<N>[.p/<W>]`` (relative to the log's prefix)."""
    return f"tile/entries/{tile_index_path(n)}{_suffix(width)}"


#: Anchor keys count down from here, so that a listing in key order starts with the newest.
_ANCHOR_TOP = 10**20 - 1
ANCHOR_DIR = "anchor/"


def anchor_path(size: int) -> str:
    """``anchor/<10**20 - 1 - size, 20 digits>`` (relative to the log's prefix): one key per tree size."""
    if not isinstance(size, int) or not 0 < size <= _ANCHOR_TOP:
        raise InvalidInput(f"an anchored tree size is from 1 to {_ANCHOR_TOP}, not {size!r}")
    return f"{ANCHOR_DIR}{_ANCHOR_TOP - size:020d}"


def anchored_size(path: str) -> int | None:
    """The tree size an anchor key (relative to the prefix) names; None for any other key."""
    name = path.removeprefix(ANCHOR_DIR)
    if name == path or len(name) != 20 or not name.isascii() or not name.isdigit():
        return None
    size = _ANCHOR_TOP - int(name)
    return size if size > 0 else None


def encode_bundle(entries: Sequence[bytes]) -> bytes:
    parts: list[bytes] = []
    for entry in entries:
        parts.append(len(entry).to_bytes(2, "big"))
        parts.append(entry)
    return b"".join(parts)


def decode_bundle(data: bytes) -> list[bytes]:
    """The entries of a bundle; ValueError when a length runs past the end."""
    entries: list[bytes] = []
    offset = 0
    while offset < len(data):
        if offset + 2 > len(data):
            raise ValueError("bundle ends inside a length prefix")
        length = int.from_bytes(data[offset : offset + 2], "big")
        offset += 2
        if offset + length > len(data):
            raise ValueError("bundle ends inside an entry")
        entries.append(data[offset : offset + length])
        offset += length
    return entries


def _hashes(data: bytes) -> list[bytes]:
    return [data[i : i + HASH_SIZE] for i in range(0, len(data), HASH_SIZE)]


def _tile_widths(size: int, level: int) -> tuple[int, int]:
    """(full tiles, width of the partial tile or 0) at ``level`` for a tree of ``size``."""
    return divmod(size >> (TILE_HEIGHT * level), TILE_WIDTH)


# --------------------------------------------------------------------------- signed notes (C2SP signed-note)


def _check_key_name(name: str) -> str:
    if not isinstance(name, str) or not name or any(ch.isspace() or ch == "+" for ch in name):
        raise InvalidInput("a note key name must be non-empty, without spaces or '+'")
    if any(ord(ch) < 0x20 for ch in name):
        raise InvalidInput("a note key name cannot contain control characters")
    return name


def ed25519_key_id(name: str, public_key: bytes) -> int:
    """SHA-256(key name || 0x0A || 0x01 || public key)[:4] as a big-endian uint32."""
    digest = hashlib.sha256(name.encode() + b"\n" + bytes([ED25519_SIGNATURE_TYPE]) + public_key).digest()
    return int.from_bytes(digest[:4], "big")


def _b64decode(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (ValueError, binascii.Error) as exc:
        raise InvalidInput(f"{what} is not standard base64") from exc


class NoteVerifier:
    """Verifies Ed25519 signatures of one key, identified by (name, key ID)."""

    def __init__(self, name: str, public_key: bytes) -> None:
        self.name = _check_key_name(name)
        if not isinstance(public_key, bytes) or len(public_key) != 32:
            raise InvalidInput("an Ed25519 public key is 32 bytes")
        self.public_key = public_key
        self.key_id = ed25519_key_id(name, public_key)
        self._key = Ed25519PublicKey.from_public_bytes(public_key)

    @classmethod
    def from_vkey(cls, vkey: str) -> NoteVerifier:
        """From a verifier key ``<name>+<hex key ID>+<base64(0x01 || public key)>``."""
        name, _, rest = vkey.partition("+")
        key_id_hex, _, material_b64 = rest.partition("+")
        material = _b64decode(material_b64, "verifier key")
        if len(key_id_hex) != 8 or not material or material[0] != ED25519_SIGNATURE_TYPE:
            raise InvalidInput("verifier key is not an Ed25519 vkey")
        verifier = cls(name, material[1:])
        if f"{verifier.key_id:08x}" != key_id_hex.lower():
            raise InvalidInput("verifier key's ID does not match its name and public key")
        return verifier

    @property
    def vkey(self) -> str:
        material = base64.b64encode(bytes([ED25519_SIGNATURE_TYPE]) + self.public_key).decode()
        return f"{self.name}+{self.key_id:08x}+{material}"

    def verify(self, text: bytes, signature: bytes) -> bool:
        try:
            self._key.verify(signature, text)
        except InvalidSignature:
            return False
        return True

    def __repr__(self) -> str:
        return f"NoteVerifier({self.vkey!r})"


class NoteSigner:
    """Signs note texts with one Ed25519 key (RFC 8032) under a key name."""

    def __init__(self, name: str, private_key: bytes) -> None:
        self.name = _check_key_name(name)
        if not isinstance(private_key, bytes) or len(private_key) != 32:
            raise InvalidInput("an Ed25519 private key is a 32-byte seed")
        self._key = Ed25519PrivateKey.from_private_bytes(private_key)
        self.verifier = NoteVerifier(name, self._key.public_key().public_bytes_raw())
        self.key_id = self.verifier.key_id

    @classmethod
    def from_base64(cls, name: str, private_key_b64: str) -> NoteSigner:
        return cls(name, _b64decode(private_key_b64, "private key"))

    @classmethod
    def generate(cls, name: str) -> NoteSigner:
        return cls(name, Ed25519PrivateKey.generate().private_bytes_raw())

    def signature_line(self, text: bytes) -> str:
        """``— <name> <base64(key ID || signature)>`` (without the newline)."""
        payload = self.key_id.to_bytes(4, "big") + self._key.sign(text)
        return f"{_EM_DASH} {self.name} {base64.b64encode(payload).decode()}"

    def __repr__(self) -> str:
        return f"NoteSigner({self.verifier.vkey!r}, <private key>)"


@dataclass(frozen=True)
class NoteSignature:
    name: str
    key_id: int
    signature: bytes


def split_note(note: str) -> tuple[str, list[NoteSignature]]:
    """The text (ending in its newline) and the signature lines of a signed note; InvalidInput if malformed."""
    if any(ord(ch) < 0x20 and ch != "\n" for ch in note):
        raise InvalidInput("a signed note contains a control character")
    if not note.endswith("\n"):
        raise InvalidInput("a signed note ends in a newline")
    cut = note.rfind("\n\n")
    if cut < 0:
        raise InvalidInput("a signed note has no blank line before its signatures")
    text, block = note[: cut + 1], note[cut + 2 :]
    lines = block.split("\n")[:-1]
    if not lines or len(lines) > MAX_NOTE_SIGNATURES:
        raise InvalidInput(f"a signed note has 1 to {MAX_NOTE_SIGNATURES} signature lines")
    signatures: list[NoteSignature] = []
    for line in lines:
        parts = line.split(" ")
        if len(parts) != 3 or parts[0] != _EM_DASH or not parts[1]:
            raise InvalidInput("a signature line is '— <key name> <base64 signature>'")
        payload = _b64decode(parts[2], "signature")
        if len(payload) < 5:
            raise InvalidInput("a signature is a 4-byte key ID and a signature")
        signatures.append(NoteSignature(parts[1], int.from_bytes(payload[:4], "big"), payload[4:]))
    return text, signatures


def verify_note(note: str, verifiers: Iterable[NoteVerifier]) -> tuple[str, list[NoteVerifier]]:
    """The note's text and the known keys whose signatures verified.

    signed-note rules: signatures of unknown (name, key ID) pairs are ignored; a
    known key whose signature fails rejects the note; no verified known key rejects it.
    """
    text, signatures = split_note(note)
    known = {(verifier.name, verifier.key_id): verifier for verifier in verifiers}
    verified: list[NoteVerifier] = []
    for signature in signatures:
        verifier = known.get((signature.name, signature.key_id))
        if verifier is None:
            continue
        if not verifier.verify(text.encode(), signature.signature):
            raise InvalidInput(f"the signature of key {signature.name!r} ({signature.key_id:08x}) does not verify")
        verified.append(verifier)
    if not verified:
        raise InvalidInput("no signature of a known key")
    return text, verified


# --------------------------------------------------------------------------- checkpoints (C2SP tlog-checkpoint)


@dataclass(frozen=True)
class Checkpoint:
    """A verified checkpoint: origin, tree size, root hash, and the note it came from."""

    origin: str
    size: int
    root: bytes
    note: str = ""
    signed_by: tuple[str, ...] = ()

    def body(self) -> str:
        return checkpoint_body(self.origin, self.size, self.root)


def checkpoint_body(origin: str, size: int, root: bytes) -> str:
    return f"{origin}\n{size}\n{base64.b64encode(root).decode()}\n"


def parse_checkpoint(note: str, origin: str, verifiers: Iterable[NoteVerifier]) -> Checkpoint:
    """A checkpoint note, its signatures verified and its origin checked; InvalidInput otherwise."""
    text, verified = verify_note(note, verifiers)
    lines = text.split("\n")[:-1]
    if len(lines) < 3 or any(not line for line in lines):
        raise InvalidInput("a checkpoint has at least three non-empty lines")
    if lines[0] != origin:
        raise InvalidInput(f"the checkpoint is for origin {lines[0]!r}, not {origin!r}")
    size_text = lines[1]
    if not size_text.isascii() or not size_text.isdigit() or (size_text != "0" and size_text.startswith("0")):
        raise InvalidInput("a checkpoint's tree size is a decimal number without leading zeroes")
    root = _b64decode(lines[2], "root hash")
    if len(root) != HASH_SIZE:
        raise InvalidInput("a checkpoint's root hash is 32 bytes")
    return Checkpoint(origin, int(size_text), root, note, tuple(v.name for v in verified))


def sign_checkpoint(
    signer: NoteSigner,
    origin: str,
    size: int,
    root: bytes,
    *,
    previous: Checkpoint | None,
    proof: Sequence[bytes],
) -> str:
    """The signed checkpoint note for (size, root), only if it extends ``previous``.

    ``proof`` is the consistency proof from ``previous`` to the new tree. A smaller
    size, the same size with another root, or a proof that does not verify raises
    :class:`InconsistentCheckpoint` and nothing is signed (tlog-checkpoint: a log MUST
    NOT sign a checkpoint inconsistent with one it signed before).
    """
    if len(root) != HASH_SIZE or size < 0:
        raise InvalidInput("a checkpoint is a size and a 32-byte root")
    if previous is not None and previous.size > 0:
        if previous.origin != origin:
            raise InconsistentCheckpoint(f"the previous checkpoint is for origin {previous.origin!r}")
        if not verify_consistency(previous.size, size, previous.root, root, proof):
            raise InconsistentCheckpoint(
                f"refusing to sign size {size} root {root.hex()}: it does not extend the signed "
                f"size {previous.size} root {previous.root.hex()}"
            )
    elif size == 0 and root != EMPTY_ROOT:
        raise InconsistentCheckpoint("the empty tree's root is SHA-256 of nothing")
    body = checkpoint_body(origin, size, root)
    return f"{body}\n{signer.signature_line(body.encode())}\n"


# --------------------------------------------------------------------------- proof verification (RFC 9162 §2.1.3.2, §2.1.4.2)


def _all_hashes(values: Iterable[bytes]) -> bool:
    return all(isinstance(value, bytes) and len(value) == HASH_SIZE for value in values)


def verify_inclusion(entry_hash: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes) -> bool:
    """Whether ``proof`` shows the leaf hash ``entry_hash`` at ``index`` in the tree of ``size`` with ``root``."""
    if not 0 <= index < size or not _all_hashes([entry_hash, root, *proof]):
        return False
    fn, sn, r = index, size - 1, entry_hash
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn & 1 == 0 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def verify_consistency(old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]) -> bool:
    """Whether ``proof`` shows the tree (new_size, new_root) extends (old_size, old_root).

    Equal sizes need an empty proof and equal roots; an empty old tree proves nothing
    and is refused, even against another empty tree (as in transparency-dev/merkle):
    callers special-case it.
    """
    if old_size <= 0 or old_size > new_size:
        return False
    if old_size == new_size:
        return not proof and old_root == new_root
    if not proof or not _all_hashes([old_root, new_root, *proof]):
        return False
    path = list(proof)
    if old_size & (old_size - 1) == 0:
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn & 1 == 0 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return fr == old_root and sr == new_root and sn == 0


# --------------------------------------------------------------------------- reading tiles


class _Tiles:
    """Hashes of the tree read from the tiles of one signed size, cached per tile."""

    def __init__(self, blobs: BlobStore, prefix: str, size: int) -> None:
        self._blobs, self._prefix, self.size = blobs, prefix, size
        self._cache: dict[str, list[bytes]] = {}

    def tile(self, level: int, n: int) -> list[bytes]:
        full, width = _tile_widths(self.size, level)
        wanted = TILE_WIDTH if n < full else width
        if n > full or wanted == 0:
            raise InvalidInput(f"tile {level}/{n} is beyond tree size {self.size}")
        key = tile_path(level, n, wanted)
        hashes = self._cache.get(key)
        if hashes is None:
            try:
                data = self._blobs.get(self._prefix + key).data
            except NotFound as exc:
                raise LogCorrupt(f"tile {key} is missing under {self._prefix!r}") from exc
            if len(data) != wanted * HASH_SIZE:
                raise LogCorrupt(f"tile {key} is {len(data)} bytes, not {wanted * HASH_SIZE}")
            hashes = self._cache[key] = _hashes(data)
        return hashes

    def stored(self, level: int, index: int) -> bytes:
        n, i = divmod(index, TILE_WIDTH)
        return self.tile(level, n)[i]

    def mth(self, start: int, end: int) -> bytes:
        """MTH(D[start:end]) for end <= size, from the stored hashes and hashing within tiles."""
        n = end - start
        if n == 0:
            return EMPTY_ROOT
        if n & (n - 1) == 0 and start % n == 0:
            height = n.bit_length() - 1
            if height % TILE_HEIGHT == 0:
                return self.stored(height // TILE_HEIGHT, start >> height)
        k = _split(n)
        return node_hash(self.mth(start, start + k), self.mth(start + k, end))

    def inclusion(self, index: int, start: int, end: int) -> list[bytes]:
        """RFC 6962 §2.1.1 PATH(index, D[start:end]) (index relative to start)."""
        n = end - start
        if n == 1:
            return []
        k = _split(n)
        if index < k:
            return [*self.inclusion(index, start, start + k), self.mth(start + k, end)]
        return [*self.inclusion(index - k, start + k, end), self.mth(start, start + k)]

    def subproof(self, m: int, start: int, end: int, complete: bool) -> list[bytes]:
        """RFC 6962 §2.1.2 SUBPROOF(m, D[start:end], b)."""
        n = end - start
        if m == n:
            return [] if complete else [self.mth(start, end)]
        k = _split(n)
        if m <= k:
            return [*self.subproof(m, start, start + k, complete), self.mth(start + k, end)]
        return [*self.subproof(m - k, start + k, end, False), self.mth(start, start + k)]


# --------------------------------------------------------------------------- the log


@dataclass(frozen=True)
class AppendResult:
    first_index: int
    size: int
    root: bytes
    checkpoint: str


@dataclass
class _Write:
    key: str
    data: bytes
    etag: str = ""


class Log:
    """One transparency log under ``prefix`` of ``blobs``.

    ``signer`` signs new checkpoints (None: a read-only log). ``verifiers`` are the
    keys whose signatures make a checkpoint trusted; the signer's own key is added.
    Keys rotate by signing with the new key while readers trust both. ``anchor``:
    a second store every new checkpoint is also written to (module doc, Anchoring).
    """

    def __init__(
        self,
        blobs: BlobStore,
        prefix: str,
        origin: str,
        signer: NoteSigner | None = None,
        verifiers: Iterable[NoteVerifier] | Mapping[str, NoteVerifier] = (),
        anchor: BlobStore | None = None,
    ) -> None:
        if not isinstance(prefix, str) or not prefix.strip("/"):
            raise InvalidInput("a log needs a non-empty blob prefix")
        if not isinstance(origin, str) or not origin or "\n" in origin or any(ord(ch) < 0x20 for ch in origin):
            raise InvalidInput("a log origin is one non-empty line")
        self.blobs = blobs
        self.prefix = prefix.strip("/") + "/"
        self.origin = origin
        self.signer = signer
        known = list(verifiers.values()) if isinstance(verifiers, Mapping) else list(verifiers)
        if signer is not None:
            known.append(signer.verifier)
        self.verifiers: tuple[NoteVerifier, ...] = tuple(known)
        if not self.verifiers:
            raise InvalidInput("a log needs a signer or at least one verifier")
        #: Where every checkpoint is also written (module doc, Anchoring); None: not anchored.
        self.anchor = anchor

    # ----------------------------------------------------------------- reading

    def _read_checkpoint(self) -> tuple[Checkpoint | None, str | None]:
        try:
            blob = self.blobs.get(self.prefix + "checkpoint")
        except NotFound:
            return None, None
        return self._parse(blob.data), blob.properties.etag

    def _parse(self, data: bytes) -> Checkpoint:
        try:
            if len(data) > MAX_CHECKPOINT_BYTES:
                raise InvalidInput("the checkpoint is too large")
            return parse_checkpoint(data.decode("utf-8"), self.origin, self.verifiers)
        except (InvalidInput, UnicodeDecodeError) as exc:
            raise LogCorrupt(f"the checkpoint of log {self.origin!r} is not valid: {exc}") from exc

    def checkpoint(self) -> Checkpoint:
        """The current checkpoint, verified; the empty tree (unsigned) when nothing was appended yet."""
        current, _ = self._read_checkpoint()
        return current if current is not None else Checkpoint(self.origin, 0, EMPTY_ROOT)

    def _tiles_for(self, size: int | None) -> tuple[_Tiles, int]:
        current = self.checkpoint()
        wanted = current.size if size is None else size
        if not 0 <= wanted <= current.size:
            raise InvalidInput(f"tree size {wanted} is not from 0 to the log's size {current.size}")
        return _Tiles(self.blobs, self.prefix, current.size), wanted

    def root(self, size: int) -> bytes:
        """MTH of the first ``size`` entries (any size up to the checkpoint's)."""
        tiles, size = self._tiles_for(size)
        return tiles.mth(0, size)

    def entry(self, index: int) -> bytes:
        """Entry ``index``; NotFound beyond the signed size."""
        size = self.checkpoint().size
        if not isinstance(index, int) or not 0 <= index < size:
            raise NotFound(f"log {self.origin!r} has no entry {index} (size {size})")
        return self._bundle(index // TILE_WIDTH, size)[index % TILE_WIDTH]

    def entries(self, start: int = 0, stop: int | None = None) -> Iterator[bytes]:
        """Entries ``start`` to ``stop`` (default: the signed size), read a bundle at a time."""
        size = self.checkpoint().size
        stop = size if stop is None else stop
        if not 0 <= start <= stop <= size:
            raise InvalidInput(f"entries {start}..{stop} are not within the log's size {size}")
        index = start
        while index < stop:
            bundle = self._bundle(index // TILE_WIDTH, size)
            first = index % TILE_WIDTH
            count = min(len(bundle) - first, stop - index)
            yield from bundle[first : first + count]
            index += count

    def _bundle(self, n: int, size: int) -> list[bytes]:
        full, width = _tile_widths(size, 0)
        wanted = TILE_WIDTH if n < full else width
        key = bundle_path(n, wanted)
        try:
            entries = decode_bundle(self.blobs.get(self.prefix + key).data)
        except NotFound as exc:
            raise LogCorrupt(f"entry bundle {key} is missing") from exc
        except ValueError as exc:
            raise LogCorrupt(f"entry bundle {key} is malformed: {exc}") from exc
        if len(entries) != wanted:
            raise LogCorrupt(f"entry bundle {key} holds {len(entries)} entries, not {wanted}")
        return entries

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """RFC 6962 audit path of entry ``index`` in the tree of ``size`` (default: the signed size)."""
        tiles, size = self._tiles_for(size)
        if not 0 <= index < size:
            raise InvalidInput(f"entry {index} is not in a tree of size {size}")
        return tiles.inclusion(index, 0, size)

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        """RFC 6962 consistency proof from ``old_size`` to ``new_size`` (default: the signed size)."""
        tiles, new_size = self._tiles_for(new_size)
        if not 0 <= old_size <= new_size:
            raise InvalidInput(f"old size {old_size} is not from 0 to {new_size}")
        if old_size in (0, new_size):
            return []
        return tiles.subproof(old_size, 0, new_size, True)

    # ----------------------------------------------------------------- writing

    def append(self, entries: Sequence[bytes]) -> AppendResult:
        """Append ``entries`` in order and commit them with a new signed checkpoint (see the module doc)."""
        if self.signer is None:
            raise InvalidInput("this log has no signer: it is read-only")
        batch: list[bytes] = []
        for entry in entries:
            if not isinstance(entry, (bytes, bytearray, memoryview)):
                raise InvalidInput("log entries are bytes")
            batch.append(bytes(entry))
            if len(entry) > MAX_ENTRY_BYTES:
                raise InvalidInput(f"a log entry is at most {MAX_ENTRY_BYTES} bytes, got {len(entry)}")
        previous, etag = self._read_checkpoint()
        old_size = previous.size if previous else 0
        if not batch:
            current = previous or Checkpoint(self.origin, 0, EMPTY_ROOT)
            return AppendResult(old_size, old_size, current.root, current.note)
        new_size = old_size + len(batch)
        writes = self._write_tree(batch, old_size, etag)
        tiles = _Tiles(self.blobs, self.prefix, new_size)
        new_root = tiles.mth(0, new_size)
        proof = tiles.subproof(old_size, 0, new_size, True) if 0 < old_size else []
        note = sign_checkpoint(self.signer, self.origin, new_size, new_root, previous=previous, proof=proof)
        self._commit(note, etag)
        self._repair(writes)
        if self.anchor is not None:
            self.anchor_checkpoint(note)
        return AppendResult(old_size, new_size, new_root, note)

    # ----------------------------------------------------------------- anchoring

    def anchor_checkpoint(self, note: str | None = None) -> Checkpoint | None:
        """Write ``note`` (default: the current checkpoint) to the anchor, create-only; returns it.

        Idempotent: a note of the same body already anchored is kept. One of another
        body at that size is :class:`LogCorrupt` (the log was forked: do not extend it).
        None when the log is empty; InvalidInput without an anchor store.
        """
        if self.anchor is None:
            raise InvalidInput(f"log {self.origin!r} has no anchor store")
        checkpoint = self._parse(note.encode("utf-8")) if note is not None else self.checkpoint()
        if checkpoint.size == 0:
            return None
        key = self.prefix + anchor_path(checkpoint.size)
        data = checkpoint.note.encode("utf-8")
        try:
            self.anchor.put(key, data, content_type=CHECKPOINT_CONTENT_TYPE, if_none_match=True)
            return checkpoint
        except AlreadyExists:
            pass
        try:
            anchored = self._parse(self.anchor.get(key).data)
        except Conflict as exc:  # a write-once store saw it written over: evidence, not contention
            raise LogCorrupt(f"the anchored checkpoint {key} of log {self.origin!r} was written over: {exc}") from exc
        if anchored.body() != checkpoint.body():
            raise LogCorrupt(
                f"log {self.origin!r} has size {checkpoint.size} root {checkpoint.root.hex()}, but the anchor holds "
                f"root {anchored.root.hex()} for that size: the log was rewritten since; run verify"
            )
        return anchored

    def is_anchored(self, size: int) -> bool:
        """Whether the anchor holds a checkpoint of ``size`` (its content is not checked here)."""
        if self.anchor is None:
            raise InvalidInput(f"log {self.origin!r} has no anchor store")
        return self.anchor.exists(self.prefix + anchor_path(size))

    def newest_anchored(self) -> int:
        """The size of the newest anchored checkpoint (by key; 0: none), with one listing call."""
        if self.anchor is None:
            raise InvalidInput(f"log {self.origin!r} has no anchor store")
        for item in self.anchor.list(self.prefix + ANCHOR_DIR, limit=1).items:
            size = anchored_size(item.key.removeprefix(self.prefix))
            if size is not None:
                return size
        return 0

    def _write_tree(self, batch: list[bytes], old_size: int, etag: str | None) -> list[_Write]:
        """Write the bundles and tiles of the tree grown by ``batch``; returns what was written."""
        writes: list[_Write] = []
        # Entry bundles: the old partial bundle, extended.
        first_bundle, old_width = divmod(old_size, TILE_WIDTH)
        carried = self._bundle(first_bundle, old_size) if old_width else []
        items = carried + batch
        for i in range(0, len(items), TILE_WIDTH):
            chunk = items[i : i + TILE_WIDTH]
            writes.append(
                self._put(bundle_path(first_bundle + i // TILE_WIDTH, len(chunk)), encode_bundle(chunk), etag)
            )
        # Tiles, bottom-up: each full tile's MTH becomes a new hash one level up.
        old_tiles = _Tiles(self.blobs, self.prefix, old_size)
        new_hashes = [leaf_hash(entry) for entry in batch]
        level = 0
        while new_hashes:
            first_tile, old_width = _tile_widths(old_size, level)
            hashes = (old_tiles.tile(level, first_tile) if old_width else []) + new_hashes
            new_hashes = []
            for i in range(0, len(hashes), TILE_WIDTH):
                chunk = hashes[i : i + TILE_WIDTH]
                writes.append(
                    self._put(tile_path(level, first_tile + i // TILE_WIDTH, len(chunk)), b"".join(chunk), etag)
                )
                if len(chunk) == TILE_WIDTH:
                    new_hashes.append(root_from_leaf_hashes(chunk))
            level += 1
        return writes

    def _put(self, key: str, data: bytes, checkpoint_etag: str | None) -> _Write:
        """Create ``key``; if something beyond the signed size is there already, keep it when equal,
        else replace it (it is untrusted) unless another writer has committed meanwhile."""
        full_key = self.prefix + key
        try:
            props = self.blobs.put(full_key, data, content_type=TILE_CONTENT_TYPE, if_none_match=True)
            return _Write(full_key, data, props.etag)
        except AlreadyExists:
            pass
        try:
            existing = self.blobs.get(full_key)
        except NotFound:
            existing = None
        if existing is not None and existing.data == data:
            return _Write(full_key, data, existing.properties.etag)
        self._ensure_unchanged(checkpoint_etag)
        try:
            if existing is None:
                props = self.blobs.put(full_key, data, content_type=TILE_CONTENT_TYPE, if_none_match=True)
            else:
                props = self.blobs.put(
                    full_key, data, content_type=TILE_CONTENT_TYPE, if_match=existing.properties.etag
                )
        except (AlreadyExists, PreconditionFailed, NotFound) as exc:
            raise LogConflict(f"another writer is writing {key} of log {self.origin!r}") from exc
        return _Write(full_key, data, props.etag)

    def _ensure_unchanged(self, etag: str | None) -> None:
        try:
            current = self.blobs.head(self.prefix + "checkpoint").etag
        except NotFound:
            current = None
        if current != etag:
            raise LogConflict(f"another writer committed to log {self.origin!r}; read the checkpoint and try again")

    def _commit(self, note: str, etag: str | None) -> None:
        key, data = self.prefix + "checkpoint", note.encode("utf-8")
        try:
            if etag is None:
                self.blobs.put(key, data, content_type=CHECKPOINT_CONTENT_TYPE, if_none_match=True)
            else:
                self.blobs.put(key, data, content_type=CHECKPOINT_CONTENT_TYPE, if_match=etag)
        except (AlreadyExists, PreconditionFailed, NotFound) as exc:
            raise LogConflict(f"another writer committed to log {self.origin!r} first; nothing was committed") from exc
        except BackendUnavailable:
            # The write may have landed: if the checkpoint is ours, the append happened.
            try:
                if self.blobs.get(key).data == data:
                    return
            except (NotFound, BackendUnavailable):
                pass
            raise

    def _repair(self, writes: list[_Write]) -> None:
        """After the commit, put back any object a losing writer replaced before it lost."""
        for write in writes:
            try:
                if self.blobs.head(write.key).etag == write.etag:
                    continue
            except NotFound:
                pass
            self.blobs.put(write.key, write.data, content_type=TILE_CONTENT_TYPE)


# --------------------------------------------------------------------------- verifying a whole log


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a log: what kind, which object (key relative to the prefix), and detail."""

    kind: str
    key: str
    detail: str


@dataclass
class VerifyReport:
    size: int = 0
    root: bytes = b""
    problems: list[Problem] = field(default_factory=list)
    #: Anchored checkpoints read and checked (0 without an anchor store), and the newest one's size.
    anchored: int = 0
    anchored_size: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def kinds(self) -> set[str]:
        return {problem.kind for problem in self.problems}

    def add(self, kind: str, key: str, detail: str) -> None:
        self.problems.append(Problem(kind, key, detail))


def verify_log(
    blobs: BlobStore,
    prefix: str,
    origin: str,
    verifiers: Iterable[NoteVerifier] | Mapping[str, NoteVerifier],
    *,
    trusted: str | None = None,
    anchor: BlobStore | None = None,
) -> VerifyReport:
    """Recompute the whole log from its bundles and tiles and report every problem found.

    Checks: the checkpoint parses and carries a valid signature of a known key; every
    bundle and tile the checkpoint covers exists with the right width; every entry's
    leaf hash equals its level 0 tile hash; every tile hash at level L >= 1 equals
    the MTH of the full tile below it; the root recomputed from the entries equals
    the checkpoint's; ``trusted`` (a checkpoint note saved earlier, also verified)
    is the root of the first ``trusted.size`` entries, i.e. the log extends it; and
    so is every checkpoint of the ``anchor`` store (module doc, Anchoring).
    """
    keys = list(verifiers.values()) if isinstance(verifiers, Mapping) else list(verifiers)
    prefix = prefix.strip("/") + "/"
    report = VerifyReport()
    try:
        data = blobs.get(prefix + "checkpoint").data
    except NotFound:
        report.add("checkpoint-missing", "checkpoint", "no checkpoint")
        return report
    try:
        current = parse_checkpoint(data.decode("utf-8"), origin, keys)
    except (InvalidInput, UnicodeDecodeError) as exc:
        report.add("checkpoint-invalid", "checkpoint", str(exc))
        return report
    report.size, size = current.size, current.size

    leaf_hashes = _verify_bundles(blobs, prefix, size, report)
    computed = leaf_hashes
    level = 0
    while (size >> (TILE_HEIGHT * level)) > 0:
        full, width = _tile_widths(size, level)
        above: list[bytes | None] = []
        for n in range(full + (1 if width else 0)):
            wanted = TILE_WIDTH if n < full else width
            key = tile_path(level, n, wanted)
            expected = computed[n * TILE_WIDTH : n * TILE_WIDTH + wanted]
            try:
                stored = blobs.get(prefix + key).data
            except NotFound:
                report.add("tile-missing", key, "tile is missing")
            else:
                if len(stored) != wanted * HASH_SIZE:
                    report.add("tile-malformed", key, f"{len(stored)} bytes, not {wanted * HASH_SIZE}")
                else:
                    for i, (have, want) in enumerate(zip(_hashes(stored), expected, strict=True)):
                        if want is not None and have != want:
                            if level == 0:
                                report.add(
                                    "entry-hash", key, f"entry {n * TILE_WIDTH + i} does not hash to its tile hash"
                                )
                            else:
                                report.add("tile-hash", key, f"hash {i} is not the hash of the tile below")
            if wanted == TILE_WIDTH:
                complete = _complete(expected)
                above.append(None if complete is None else root_from_leaf_hashes(complete))
        computed = above
        level += 1

    known = _complete(leaf_hashes)
    root = None if known is None else root_from_leaf_hashes(known)
    if root is not None:
        report.root = root
        if root != current.root:
            report.add("root-mismatch", "checkpoint", "the checkpoint's root is not the root of the entries")

    if trusted is not None:
        try:
            earlier = parse_checkpoint(trusted, origin, keys)
        except InvalidInput as exc:
            report.add("trusted-invalid", "checkpoint", f"the trusted checkpoint is not valid: {exc}")
        else:
            if earlier.size > size:
                report.add(
                    "inconsistent", "checkpoint", f"the log shrank from the trusted size {earlier.size} to {size}"
                )
            elif known is not None:
                old_root = root_from_leaf_hashes(known[: earlier.size])
                if old_root != earlier.root:
                    report.add(
                        "inconsistent", "checkpoint", f"the first {earlier.size} entries do not have the trusted root"
                    )
    if anchor is not None:
        _verify_anchors(anchor, prefix, origin, keys, size, known_prefix(leaf_hashes), report)
    return report


def known_prefix(hashes: Sequence[bytes | None]) -> list[bytes]:
    """The hashes up to the first unknown one."""
    known: list[bytes] = []
    for value in hashes:
        if value is None:
            break
        known.append(value)
    return known


def roots_at(hashes: Sequence[bytes], sizes: Iterable[int]) -> dict[int, bytes]:
    """MTH of the first ``s`` leaf hashes for each ``s`` of ``sizes`` within 1..len(hashes), in one pass."""
    roots: dict[int, bytes] = {}
    stack: list[tuple[int, bytes]] = []
    done = 0
    for target in sorted({s for s in sizes if 0 < s <= len(hashes)}):
        for value in hashes[done:target]:
            size, current = 1, value
            while stack and stack[-1][0] == size:
                left_size, left = stack.pop()
                size, current = left_size + size, node_hash(left, current)
            stack.append((size, current))
        done = target
        root = stack[-1][1]
        for _, left in reversed(stack[:-1]):
            root = node_hash(left, root)
        roots[target] = root
    return roots


def _verify_anchors(anchor: BlobStore, prefix: str, origin: str, keys: list[NoteVerifier], size: int,
                    leaf_hashes: list[bytes], report: VerifyReport) -> None:
    """Every anchored note verifies, names its key's size, and the log (``size``, ``leaf_hashes``) extends it."""
    anchored: dict[int, Checkpoint] = {}
    for item in anchor.list_all(prefix + ANCHOR_DIR):
        key = item.key.removeprefix(prefix)
        wanted = anchored_size(key)
        if wanted is None:
            report.add("anchor-invalid", key, "not an anchored checkpoint's key")
            continue
        if wanted in anchored:
            continue  # a listing of versions names a key once per version
        report.anchored_size = max(report.anchored_size, wanted)
        try:
            data = anchor.get(item.key).data
            note = parse_checkpoint(data.decode("utf-8"), origin, keys)
        except UnicodeDecodeError as exc:
            report.add("anchor-invalid", key, f"not a checkpoint note: {exc}")
            continue
        except InvalidInput as exc:
            report.add("anchor-invalid", key, f"the anchored checkpoint is not valid: {exc}")
            continue
        except StowageError as exc:  # gone since the listing, or rewritten (a write-once store says so)
            report.add("anchor-unreadable", key, str(exc))
            continue
        if note.size != wanted:
            report.add("anchor-invalid", key, f"holds a checkpoint of size {note.size}, not {wanted}")
            continue
        anchored[wanted] = note
    report.anchored = len(anchored)
    roots = roots_at(leaf_hashes, anchored)
    for anchored_at, note in sorted(anchored.items()):
        key = anchor_path(anchored_at)
        if anchored_at > size:
            report.add("anchor-inconsistent", key,
                       f"the log has {size} entries but a checkpoint of size {anchored_at} was anchored: "
                       "it was truncated or replaced since")
        elif anchored_at in roots and roots[anchored_at] != note.root:
            report.add("anchor-inconsistent", key,
                       f"the first {anchored_at} entries do not have the anchored root: the log was rewritten "
                       "or forked since")


def _complete(hashes: Sequence[bytes | None]) -> list[bytes] | None:
    """The hashes when none is unknown, else None."""
    known = [value for value in hashes if value is not None]
    return known if len(known) == len(hashes) else None


def _verify_bundles(blobs: BlobStore, prefix: str, size: int, report: VerifyReport) -> list[bytes | None]:
    """Leaf hashes of every entry (None where a bundle is missing or malformed)."""
    full, width = _tile_widths(size, 0)
    hashes: list[bytes | None] = []
    for n in range(full + (1 if width else 0)):
        wanted = TILE_WIDTH if n < full else width
        key = bundle_path(n, wanted)
        try:
            entries = decode_bundle(blobs.get(prefix + key).data)
        except NotFound:
            report.add("bundle-missing", key, "entry bundle is missing")
            entries = None
        except ValueError as exc:
            report.add("bundle-malformed", key, str(exc))
            entries = None
        if entries is not None and len(entries) != wanted:
            report.add("bundle-malformed", key, f"{len(entries)} entries, not {wanted}")
            entries = None
        hashes.extend([leaf_hash(entry) for entry in entries] if entries is not None else [None] * wanted)
    return hashes
