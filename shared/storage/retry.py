"""The one retry policy for lost optimistic-concurrency races.

A domain reads a row with its ETag, decides, and writes conditionally on that
ETag. Losing the race (another writer moved the ETag, created the row first, or
the store cancelled a conflicting transaction) is not an error for the caller: the
domain reads again and decides again. :func:`retry_races` runs such an attempt
with bounded, jittered exponential backoff; when every attempt loses it raises
:class:`~shared.errors.Busy` (503), which is distinct from a
permanent :class:`~shared.errors.Conflict` (409) that a decision raises.

Only a :class:`LostRace` raised by the attempt is retried. It is a control-flow
exception, deliberately not a :class:`~shared.errors.StowageError`, so it can never
reach a client by accident; :func:`conditional` turns the store's race signals
into it around the write alone, so that a ``PreconditionFailed`` raised by a
decision (a client's stale If-Match) is never retried.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

from shared.errors import AlreadyExists, Busy, NotFound, PreconditionFailed

T = TypeVar("T")


class LostRace(Exception):
    """Another writer got there first; read again and decide again. Never reaches a client."""


@contextmanager
def conditional() -> Iterator[None]:
    """Around a conditional write: the store's race signals become :class:`LostRace`.

    ``PreconditionFailed`` (the ETag moved), ``AlreadyExists`` (a create-only row
    appeared), ``NotFound`` (a row updated under its ETag was deleted) and
    ``Busy`` (a transaction conflict or throttling) all mean "state changed under
    us", which a fresh read resolves.
    """
    try:
        yield
    except (PreconditionFailed, AlreadyExists, NotFound, Busy) as exc:
        raise LostRace(str(exc)) from exc


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try: ``attempts`` in all, sleeping a random time up to
    ``base * 2**n`` (capped at ``cap``) seconds between them. Full jitter spreads
    writers that collided so they stop colliding; the cap keeps a request's worst
    case short (16 attempts stay under about 0.6 s of sleep)."""

    attempts: int = 16
    base: float = 0.001
    cap: float = 0.05

    def delay(self, attempt: int, rng: Callable[[float, float], float] = random.uniform) -> float:
        return rng(0.0, min(self.cap, self.base * 2 ** min(attempt, 16)))


DEFAULT_POLICY = RetryPolicy()


def retry_races(attempt: Callable[[], T], *, what: str, policy: RetryPolicy = DEFAULT_POLICY,
                sleep: Callable[[float], None] = time.sleep) -> T:
    """``attempt()`` until it does not raise :class:`LostRace`; :class:`Busy` after ``policy.attempts``.

    ``what`` names the contended thing in the error, e.g. ``"session 's1'"``.
    """
    last: LostRace | None = None
    for n in range(policy.attempts):
        try:
            return attempt()
        except LostRace as exc:
            last = exc
            if n + 1 < policy.attempts:
                sleep(policy.delay(n))
    raise Busy(f"{what} is changing too often to win a write after {policy.attempts} attempts "
               f"(last: {last}); retry") from last
