"""What a cold start of the function app imports and builds, and what it leaves for first use.

Each check imports in a fresh interpreter and reads ``sys.modules`` and pydantic's
build flags there: deterministic, unlike a timing (``bench/coldstart.py`` has the figures).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: Loaded on first use only: the FastAPI app and its routers (first HTTP request), the Python
#: facade (StorageManager, with every domain's client), LangGraph and the savers.
LAZY = ("functions.http_api", "functions.http", "functions.http.objects", "functions.http.checkpoints",
        "fastapi.routing", "shared.manager", "shared.domains.checkpoints.savers", "langgraph")


def _in_a_fresh_interpreter(code: str) -> dict:
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1"})
    assert done.returncode == 0, done.stderr
    result: dict = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_importing_the_function_app_loads_no_http_app_no_facade_and_no_langgraph():
    seen = _in_a_fresh_interpreter(
        "import json, sys\n"
        "import function_app\n"
        "print(json.dumps(sorted(sys.modules)))")
    loaded = [name for name in seen if name in LAZY or name.startswith(("langgraph.", "functions.http."))]
    assert loaded == []
    assert "function_app" in seen and "functions.timers" in seen and "functions.queue_commands" in seen


def test_the_host_indexes_every_function_before_the_http_app_is_built():
    seen = _in_a_fresh_interpreter(
        "import json, sys\n"
        "import function_app\n"
        "names = sorted(f.get_function_name() for f in function_app.app.get_functions())\n"
        "print(json.dumps({'names': names, 'built': function_app.app.middleware._app._app is not None,\n"
        "                  'http_api': 'functions.http_api' in sys.modules}))")
    assert {"http_app_func", "process_command", "purge_expired_objects"} <= set(seen["names"])
    assert seen["built"] is False and seen["http_api"] is False


def test_the_http_app_is_built_once_on_first_use_and_is_the_full_app():
    seen = _in_a_fresh_interpreter(
        "import json\n"
        "import function_app\n"
        "lazy = function_app.app.middleware._app\n"
        "first = lazy.built\n"
        "paths = sorted(lazy.openapi()['paths'])\n"
        "print(json.dumps({'same': lazy.built is first, 'kind': type(first).__name__, 'paths': paths,\n"
        "                  'state': lazy.state.context is function_app.context}))")
    assert seen["same"] is True and seen["kind"] == "FastAPI" and seen["state"] is True
    assert "/api/v1/objects/{key}" in seen["paths"] and "/api/health" in seen["paths"]


def test_queue_payload_models_and_the_envelope_validator_are_built_on_first_use():
    seen = _in_a_fresh_interpreter(
        "import json\n"
        "import function_app\n"
        "from shared import commands\n"
        "from shared.domains.objects.models import ObjectsPutPayload\n"
        "from shared.domains.memory.models import CreateThreadRequest\n"
        "before = {'payload': ObjectsPutPayload.__pydantic_complete__,\n"
        "          'envelope': commands.envelope_adapter.cache_info().currsize,\n"
        "          'request_body': CreateThreadRequest.__pydantic_complete__}\n"
        "envelope = commands.envelope_adapter().validate_python({'version': 1, 'op': 'objects.put',\n"
        "    'tenant': 'acme', 'idempotency_key': 'k', 'payload': {'key': 'a', 'text': 'b'}})\n"
        "direct = ObjectsPutPayload.model_validate({'key': 'a', 'text': 'b'})\n"
        "print(json.dumps({'before': before, 'payload_after': ObjectsPutPayload.__pydantic_complete__,\n"
        "                  'same_payload': envelope.payload == direct,\n"
        "                  'same_adapter': commands.ENVELOPE_ADAPTER is commands.envelope_adapter()}))")
    # Deferred (StowageModel) until something validates with it; request bodies are built at once
    # (RequestBodyModel: FastAPI builds them with the app anyway).
    assert seen["before"] == {"payload": False, "envelope": 0, "request_body": True}
    assert seen["payload_after"] is True and seen["same_payload"] is True and seen["same_adapter"] is True


def test_the_package_exports_load_on_first_use():
    seen = _in_a_fresh_interpreter(
        "import json, sys\n"
        "import shared\n"
        "from shared import names\n"
        "before = 'shared.manager' in sys.modules\n"
        "from shared import StorageManager\n"
        "print(json.dumps({'before': before, 'after': 'shared.manager' in sys.modules,\n"
        "                  'name': StorageManager.__name__}))")
    assert seen == {"before": False, "after": True, "name": "StorageManager"}
