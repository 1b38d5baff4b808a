"""One FastAPI router per domain, ``functions/http/<domain>.py``, named by the domain's ``router``.

Routers live in the transport package, not in the domain packages, so that no
domain imports FastAPI (tests/test_layers.py enforces it): a domain names its
router by dotted path and ``functions.http_api`` mounts what the registry names.
"""
