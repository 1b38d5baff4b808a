"""Storage mechanics written once, above the backend primitives and below every domain.

    shared/backends   blob, table and queue primitives (one contract, three backends)
    shared/storage    this package: how domains use those primitives safely
    shared/domains    one package per domain, built on the two above

* :mod:`shared.storage.rows`: the stored row format (``fmt``), JSON values with
  limits, timestamps stored one way.
* :mod:`shared.storage.retry`: the one bounded, jittered retry policy for lost
  optimistic-concurrency races, and the one :class:`~shared.errors.Busy` error when
  attempts run out.
* :mod:`shared.storage.idempotency`: one marker format; a marker keeps a
  fingerprint of the request and the result it produced.
* :mod:`shared.storage.mutate`: read, decide (pure), write under the ETag read,
  with the optional idempotency marker in the same atomic batch.
* :mod:`shared.storage.due`: due indexes (timeouts, expiry, idle), fair across tenants.
* :mod:`shared.storage.changefeed`: the change feed: an outbox row in each change's own batch,
  a per-tenant sequencer (gapless, exactly once), paged readers and lag.
* :mod:`shared.storage.tlog`: a tamper-evident append-only log (RFC 6962 Merkle tree,
  C2SP tlog-tiles in a BlobStore, Ed25519 signed-note checkpoints), proofs and a full verifier.

Nothing here imports a domain, FastAPI or a concrete backend.
"""
