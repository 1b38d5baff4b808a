"""What a domain contributes to queue commands: an op name, its payload, and how to apply it.

Each domain lists its ops in its ``Domain.commands``; :mod:`shared.commands`
builds the envelope schema and the dispatcher from the registry. An op's ``apply``
must be idempotent for a given ``idempotency_key``: delivery is at least once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict

from shared.models_base import StowageModel


class CommandPayload(StowageModel):
    """Base of command payload models: unknown fields are an error, not ignored."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class Outcome:
    """What applying a command did: "applied", "duplicate" or "poisoned", and a detail."""

    status: str
    detail: str = ""


@dataclass(frozen=True)
class CommandOp:
    """One queue command: ``apply(service, tenant, payload, idempotency_key) -> Outcome``.

    ``service`` is the owning domain's service instance, shared with the HTTP
    routes of the same app, so applying a command goes through the public service
    API and keeps any state the service holds.

    ``apply`` raises shared.errors exceptions like the services do; client errors
    (bad input, too large, failed precondition, already exists) poison the message,
    others are retried.
    """

    name: str
    payload: type[BaseModel]
    apply: Callable[[Any, str, Any, str], Outcome]
    description: str = ""
