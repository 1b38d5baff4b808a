"""The base of Stowage's pydantic models: validators and schemas are built on first use.

Pydantic builds a model's core schema (its validator and serializer) when the class
is created unless ``defer_build`` is set; with it, the build happens the first time
the model validates, serializes or produces a JSON Schema. Nothing else changes:
the same fields, the same validation, the same schema. The function app imports
every domain's models on each cold start (the timer and queue functions are
declared from the registry) but a given instance may never validate most of them,
so building them at import is wasted work there.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StowageModel(BaseModel):
    """A pydantic model whose validator is built on first use (``defer_build``); subclasses merge their config."""

    model_config = ConfigDict(defer_build=True)


class RequestBodyModel(StowageModel):
    """A model the HTTP routes take as a request body or query model: built when the class is created.

    FastAPI wraps such a model in a ``TypeAdapter`` of its own, which inherits
    ``defer_build`` from the model's config and would then build on the route's
    first request, outside the filter FastAPI puts around that build, and warn
    (``UnsupportedFieldAttributeWarning``) in every process. The HTTP app builds it
    anyway, so deferring it saves nothing where it is used.
    """

    model_config = ConfigDict(defer_build=False)


__all__ = ["RequestBodyModel", "StowageModel"]
