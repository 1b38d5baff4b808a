"""LangGraph checkpointing: Stowage's savers against their peers, interleaved over rounds, in one run.

    .venv/bin/python bench/checkpoints.py [--rounds 5] [--variants normal,full,azure,remote,big,async]
                                          [--threads 20] [--loops 6] [--invokes 2]
                                          [--azurite-threads 4] [--big-threads 5] [--quick] [--no-work]

The workload is a real LangGraph graph of four nodes (plan, act, observe, reflect)
looping ``--loops`` times per invoke, ``--invokes`` invokes per thread (each resumes
its thread from storage), over ``--threads`` threads, one after the other. The state
grows: every node appends a message, so later checkpoints carry more history. A
"step" is one node run (one checkpoint and its pending writes); the throughput
figure is steps per second of wall clock.

Variants (each compares a candidate with a baseline; ratio = candidate steps/s
divided by baseline steps/s measured in the same round, so > 1 means the candidate is faster):

==============  =====================================================  ==================================================
name            candidate                                              baseline
==============  =====================================================  ==================================================
normal          direct saver, local backend, ``synchronous=NORMAL``    ``SqliteSaver`` on a file, ``synchronous=NORMAL``
full            direct saver, local backend, ``synchronous=FULL``      ``SqliteSaver``, ``synchronous=FULL`` (as shipped)
azure           direct saver on Azurite                                azure-functions-langgraph's
                                                                       ``AzureBlobCheckpointSaver`` on the same Azurite
remote          ``RemoteCheckpointSaver`` over ``stowage serve``       direct saver on the server's own data directory
                (local backend, HTTP only, one process)
big             as ``normal``, with a ~200 KB document in the state (set on the first invoke, rewritten by
                ``reflect`` once per loop), ``--big-threads`` threads
async           ``ainvoke``: the direct saver's async methods          ``AsyncSqliteSaver`` (aiosqlite), ``NORMAL``
                (``asyncio.to_thread``), local, ``NORMAL``
big-azure       ``big``'s state on Azurite, against the Azure peer (not in the default set)
async-remote    ``ainvoke`` through the remote saver's ``httpx.AsyncClient`` against the direct saver's async path
==============  =====================================================  ==================================================

Interleaving: every round runs every selected variant's two savers back to back,
alternating which goes first from round to round; each run gets a fresh store
(a new SQLite file, data directory or Azurite container; the remote variant's
server lives for the whole run and each run uses new thread ids) and one warm-up
invoke outside the timing. Each figure is the median and range (lowest-highest)
over rounds of the per-round ratio. Besides wall clock, the bench process's CPU
time per step is compared the same way (for ``remote`` the server process's CPU
is added to the client's; for the Azure rows Azurite's own CPU is not counted).
The machine's load average is printed before and after: on a shared machine the
wall-clock ratios move with it, the store-work figures below do not.

Store work (``--no-work`` skips it): after the rounds, each saver runs the workload
once more, untimed, with counters on, and the bench prints per step:

* Stowage savers: table calls (``_get``, ``_query``, ``_write``, ``_batch`` of every
  ``TableStore`` implementation, wrapped in this process, so whatever path the saver
  takes to the store is counted), rows written (each inserted, upserted or updated
  entity; deletes apart), bytes written (keys plus property values as stored: bytes
  as their length, text as UTF-8, numbers as 8), blob writes and their bytes (values
  the offload layer moved out of the table) and, on local, the data directory's size
  on disk after the stores are closed;
* ``SqliteSaver``: SQL statements and transactions (``sqlite3`` trace callback), rows
  in its ``checkpoints`` and ``writes`` tables after the run, bytes in those rows
  (keys, types, checkpoint, metadata and values), and the database file's size after close;
* Azure rows: HTTP requests to Azurite per step (``azure.core``'s ``RequestsTransport.send``,
  wrapped) for both savers, and for the peer the bytes of the blobs it left in its container;
* ``remote``: HTTP requests per step from the client.

The Azure peer: ``azure-functions-langgraph`` (PyPI; 0.12.2 when this was written),
``AzureBlobCheckpointSaver`` over ``azure.storage.blob.ContainerClient``. Its
dependencies (azure-functions, langgraph, pydantic, azure-storage-blob) are ranges that
the project's environment already satisfies, so it runs in this process, in the same
rounds, on the same Azurite: install it with
``.venv/bin/pip install 'azure-functions-langgraph[azure-blob]==0.12.2'`` (it is not needed
by ``make test``). When it is not installed the ``azure`` and ``big-azure`` rows are
skipped with that reason printed; so are rows needing Azurite when Azurite is missing.

``--quick`` is a smoke run (2 rounds, 3 threads, 2 loops, 1 Azurite thread): it shows
the bench works, not figures to quote. Figures depend on the machine's disk and load.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import operator
import random
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, AbstractContextManager, ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, TypedDict, cast

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# Run as a script, this directory comes first on sys.path, where a bench named like a
# standard module (bench/http_path.py) would shadow it: import the harness as bench.harness instead.
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != HERE]
sys.path.insert(0, str(ROOT))

from langgraph.checkpoint.base import BaseCheckpointSaver  # noqa: E402
from langgraph.checkpoint.sqlite import SqliteSaver  # noqa: E402
from langgraph.graph import END, START, StateGraph  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from bench.harness import ServedStowage, machine_load, median_range, stowage_server  # noqa: E402
from shared.config import Settings  # noqa: E402
from shared.domains.checkpoints.savers import RemoteCheckpointSaver, StowageCheckpointSaver  # noqa: E402
from shared.domains.checkpoints.service import CheckpointService  # noqa: E402
from shared.manager import StorageManager  # noqa: E402
from shared.stores import Stores  # noqa: E402
from tests.emulators import Azurite, EmulatorError, start_azurite  # noqa: E402

console = Console(width=220)  # wide tables stay readable in logs and pipes
PEER_PACKAGE = "azure-functions-langgraph"
PEER_INSTALL = ".venv/bin/pip install 'azure-functions-langgraph[azure-blob]==0.12.2'"


# --------------------------------------------------------------------------- the graph


class AgentState(TypedDict):
    messages: Annotated[list[dict[str, Any]], operator.add]
    steps: int
    plan: str
    notes: dict[str, str]
    loops_left: int


class BigState(AgentState):
    document: str


#: ~200 KB of text that does not compress to nothing (hex of pseudo-random bytes).
DOCUMENT = random.Random(10).randbytes(100_000).hex()


def _message(role: str, state: AgentState) -> dict[str, Any]:
    return {"role": role, "step": state["steps"] + 1,
            "content": f"{role} output at step {state['steps'] + 1}: " + "lorem ipsum dolor sit amet " * 8}


def plan(state: AgentState) -> dict[str, Any]:
    return {"messages": [_message("planner", state)], "steps": state["steps"] + 1,
            "plan": f"plan #{state['steps']}: look, act, check"}


def act(state: AgentState) -> dict[str, Any]:
    return {"messages": [_message("actor", state)], "steps": state["steps"] + 1}


def observe(state: AgentState) -> dict[str, Any]:
    return {"messages": [_message("observer", state)], "steps": state["steps"] + 1}


def reflect(state: AgentState) -> dict[str, Any]:
    notes = {**state["notes"], f"loop{state['loops_left']}": "went fine, keep going"}
    return {"messages": [_message("critic", state)], "steps": state["steps"] + 1, "notes": notes,
            "loops_left": state["loops_left"] - 1}


def reflect_and_revise(state: BigState) -> dict[str, Any]:
    """The big variant's reflect: the document is revised once per loop (LangGraph hands a node
    only the channels of the state type it is annotated with, hence a node of its own)."""
    return {**reflect(state), "document": f"revision at step {state['steps'] + 1}\n" + DOCUMENT}


def build(checkpointer: BaseCheckpointSaver, big: bool) -> Any:
    builder = StateGraph(BigState if big else AgentState)
    for name, node in (("plan", plan), ("act", act), ("observe", observe),
                       ("reflect", reflect_and_revise if big else reflect)):
        builder.add_node(name, node)
    builder.add_edge(START, "plan")
    builder.add_edge("plan", "act")
    builder.add_edge("act", "observe")
    builder.add_edge("observe", "reflect")
    builder.add_conditional_edges("reflect", lambda s: "plan" if s["loops_left"] > 0 else END, ["plan", END])
    return builder.compile(checkpointer=checkpointer)


@dataclass(frozen=True)
class Shape:
    """How much work one run does."""

    threads: int
    loops: int
    invokes: int
    big: bool = False

    @property
    def steps(self) -> int:
        return self.threads * self.invokes * 4 * self.loops


WARM_UP = Shape(1, 1, 1)


def _first_input(shape: Shape, invoke: int) -> dict[str, Any]:
    if invoke:
        return {"loops_left": shape.loops}
    first: dict[str, Any] = {"messages": [], "steps": 0, "plan": "", "notes": {}, "loops_left": shape.loops}
    if shape.big:
        first["document"] = DOCUMENT
    return first


def _check(state: dict[str, Any], shape: Shape) -> None:
    expected = 4 * shape.loops * shape.invokes
    assert state["steps"] == expected and len(state["messages"]) == expected, "lost updates"
    assert not shape.big or len(state["document"]) > 200_000, "lost the document"


def workload(checkpointer: BaseCheckpointSaver, shape: Shape) -> int:
    """Run the graph over every thread with ``invoke``; returns the steps. Checks the final states."""
    graph = build(checkpointer, shape.big)
    tag = uuid.uuid4().hex[:8]
    for t in range(shape.threads):
        config = {"configurable": {"thread_id": f"bench-{tag}-{t}"}}
        for i in range(shape.invokes):
            state = graph.invoke(_first_input(shape, i), config)
        _check(state, shape)
    return shape.steps


async def aworkload(checkpointer: BaseCheckpointSaver, shape: Shape) -> int:
    """The same with ``ainvoke``: the savers' async methods."""
    graph = build(checkpointer, shape.big)
    tag = uuid.uuid4().hex[:8]
    for t in range(shape.threads):
        config = {"configurable": {"thread_id": f"bench-{tag}-{t}"}}
        for i in range(shape.invokes):
            state = await graph.ainvoke(_first_input(shape, i), config)
        _check(state, shape)
    return shape.steps


# --------------------------------------------------------------------------- store-work counters


def _value_bytes(value: object) -> int:
    if isinstance(value, bytes | bytearray):
        return len(value)
    if isinstance(value, str):
        return len(value) if value.isascii() else len(value.encode("utf-8"))
    return 8


@dataclass
class StoreWork:
    """Load-independent work one run did; each field is a total over the run."""

    steps: int = 0
    calls: Counter[str] = field(default_factory=Counter)
    rows_written: int = 0
    rows_deleted: int = 0
    bytes_written: int = 0
    blob_puts: int = 0
    blob_bytes: int = 0
    requests: int = 0
    request_bytes: int = 0
    disk_bytes: int | None = None
    notes: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def per_step(self, total: float) -> float:
        return total / self.steps if self.steps else 0.0


_COUNTING: list[StoreWork] = []  # the run being counted; empty: wrappers pass straight through


def _active() -> StoreWork | None:
    return _COUNTING[-1] if _COUNTING else None


def _install_store_counters() -> None:
    """Wrap every TableStore and BlobStore implementation's primitives, once per process.

    Wrapping the ``_``-methods each backend implements (not the public ones) counts every
    path to the store, including lean internal paths that skip the public validation.
    """
    from shared.backends import base

    if getattr(base, "_bench_counted", False):
        return
    base._bench_counted = True  # type: ignore[attr-defined]
    from shared.backends import local  # noqa: F401  the implementations must be imported to be found
    with contextlib.suppress(ImportError):
        from shared.backends import azure  # noqa: F401

    def subclasses(cls: type[Any]) -> Iterator[type[Any]]:
        sub: type[Any]
        for sub in cls.__subclasses__():
            yield sub
            yield from subclasses(sub)

    def entity_bytes(entity: base.Entity) -> int:
        return (len(entity.partition_key.encode()) + len(entity.row_key.encode())
                + sum(len(name) + _value_bytes(value) for name, value in entity.properties.items()))

    def counted_write(original: Callable[..., Any]) -> Callable[..., Any]:
        def _write(self: Any, kind: base.OpKind, entity: base.Entity, if_match: str | None) -> Any:
            work = _active()
            if work is not None:
                with work.lock:
                    work.calls["_write"] += 1
                    if kind is base.OpKind.DELETE:
                        work.rows_deleted += 1
                    else:
                        work.rows_written += 1
                        work.bytes_written += entity_bytes(entity)
            return original(self, kind, entity, if_match)
        return _write

    def counted_batch(original: Callable[..., Any]) -> Callable[..., Any]:
        def _batch(self: Any, operations: list[base.TableOp]) -> Any:
            work = _active()
            if work is not None:
                with work.lock:
                    work.calls["_batch"] += 1
                    for op in operations:
                        if op.kind is base.OpKind.DELETE:
                            work.rows_deleted += 1
                        else:
                            work.rows_written += 1
                            work.bytes_written += entity_bytes(op.entity)
            return original(self, operations)
        return _batch

    def counted_call(name: str, original: Callable[..., Any]) -> Callable[..., Any]:
        def call(self: Any, *args: Any, **kwargs: Any) -> Any:
            work = _active()
            if work is not None:
                with work.lock:
                    work.calls[name] += 1
            return original(self, *args, **kwargs)
        return call

    def counted_put(original: Callable[..., Any]) -> Callable[..., Any]:
        def _put(self: Any, key: str, data: bytes, *args: Any, **kwargs: Any) -> Any:
            work = _active()
            if work is not None:
                with work.lock:
                    work.blob_puts += 1
                    work.blob_bytes += len(data)
            return original(self, key, data, *args, **kwargs)
        return _put

    for cls in subclasses(base.TableStore):
        if "_write" in vars(cls):
            cls._write = counted_write(vars(cls)["_write"])  # type: ignore[attr-defined]
        if "_batch" in vars(cls):
            cls._batch = counted_batch(vars(cls)["_batch"])  # type: ignore[attr-defined]
        for name in ("_get", "_query"):
            if name in vars(cls):
                setattr(cls, name, counted_call(name, vars(cls)[name]))
    for cls in subclasses(base.BlobStore):
        if "_put" in vars(cls):
            cls._put = counted_put(vars(cls)["_put"])  # type: ignore[attr-defined]
        if "_get" in vars(cls):
            cls._get = counted_call("blob _get", vars(cls)["_get"])  # type: ignore[attr-defined]


def _install_request_counters() -> None:
    """Count HTTP requests of the Azure SDKs (sync transport) and of httpx clients, once per process."""
    import httpx

    if getattr(httpx, "_bench_counted", False):
        return
    httpx._bench_counted = True  # type: ignore[attr-defined]

    def body_length(request: Any) -> int:
        for name in ("content", "body", "data"):
            with contextlib.suppress(Exception):
                value = getattr(request, name)
                if isinstance(value, bytes | bytearray | str):
                    return len(value)
        return 0

    def counted(original: Callable[..., Any]) -> Callable[..., Any]:
        def send(self: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
            work = _active()
            if work is not None:
                with work.lock:
                    work.requests += 1
                    work.request_bytes += body_length(request)
            return original(self, request, *args, **kwargs)
        return send

    httpx.Client.send = counted(httpx.Client.send)  # type: ignore[method-assign]
    with contextlib.suppress(ImportError):
        from azure.core.pipeline.transport import RequestsTransport

        RequestsTransport.send = counted(RequestsTransport.send)  # type: ignore[method-assign]


@contextlib.contextmanager
def counting() -> Iterator[StoreWork]:
    _install_store_counters()
    _install_request_counters()
    work = StoreWork()
    _COUNTING.append(work)
    try:
        yield work
    finally:
        _COUNTING.remove(work)


def _tree_bytes(path: Path) -> int:
    return sum(entry.stat().st_size for entry in path.rglob("*") if entry.is_file())


# --------------------------------------------------------------------------- the savers


@dataclass
class Context:
    """What the savers of one bench run share: a work directory, emulators and servers started on demand."""

    work: Path
    stack: ExitStack
    server_log_level: str
    _azurite: Azurite | None = None
    _azurite_error: str | None = None
    _server: ServedStowage | None = None

    def fresh(self, what: str) -> Path:
        path = self.work / f"{what}-{uuid.uuid4().hex[:8]}"
        path.mkdir(parents=True)
        return path

    def azurite(self) -> Azurite:
        if self._azurite is None and self._azurite_error is None:
            try:
                self._azurite = self.stack.enter_context(start_azurite(self.work / "azurite"))
            except EmulatorError as exc:
                self._azurite_error = str(exc)
        if self._azurite is None:
            raise Unavailable(f"Azurite: {self._azurite_error}")
        return self._azurite

    def server(self) -> ServedStowage:
        if self._server is None:
            self._server = self.stack.enter_context(stowage_server(self.work / "served",
                                                                   log_level=self.server_log_level))
        return self._server


class Unavailable(Exception):
    """A saver cannot run here (a package or an emulator is missing); the variant is skipped with the reason."""


@dataclass(frozen=True)
class Saver:
    """One side of a comparison: how to open it, sync and async, and what to count after a run."""

    key: str
    label: str
    open: Callable[[Context, StoreWork | None], AbstractContextManager[BaseCheckpointSaver]] | None
    open_async: Callable[[Context, StoreWork | None], AbstractAsyncContextManager[BaseCheckpointSaver]] | None = None
    #: CPU seconds spent for this saver outside the bench process so far (the remote saver's server).
    outside_cpu: Callable[[Context], float] | None = None
    #: What ``open_async`` opens, when it is another class (AsyncSqliteSaver).
    async_label: str | None = None

    def label_for(self, mode: str) -> str:
        return (self.async_label or self.label) if mode == "async" else self.label


def _sqlite(synchronous: str) -> Saver:
    @contextlib.contextmanager
    def open_sync(context: Context, work: StoreWork | None) -> Iterator[BaseCheckpointSaver]:
        path = context.fresh("sqlite") / "langgraph.sqlite"
        conn = sqlite3.connect(path, check_same_thread=False)
        conn.execute(f"PRAGMA synchronous={synchronous}")
        statements: Counter[str] = Counter()
        if work is not None:
            conn.set_trace_callback(lambda sql: statements.update([sql.lstrip().split(None, 1)[0].upper()]))
        try:
            yield SqliteSaver(conn)
        finally:
            conn.set_trace_callback(None)
            conn.close()
        if work is not None:
            _sqlite_footprint(path, statements, work)
        shutil.rmtree(path.parent)

    @contextlib.asynccontextmanager
    async def open_async(context: Context, work: StoreWork | None) -> AsyncIterator[BaseCheckpointSaver]:
        import aiosqlite
        from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

        path = context.fresh("asqlite") / "langgraph.sqlite"
        async with aiosqlite.connect(path) as conn:
            await conn.execute(f"PRAGMA synchronous={synchronous}")
            yield AsyncSqliteSaver(conn)
        shutil.rmtree(path.parent)

    return Saver(f"sqlite-{synchronous}", f"SqliteSaver, synchronous={synchronous}", open_sync, open_async,
                 async_label=f"AsyncSqliteSaver (aiosqlite), synchronous={synchronous}")


def _sqlite_footprint(path: Path, statements: Counter[str], work: StoreWork) -> None:
    conn = sqlite3.connect(path)
    try:
        checkpoints, checkpoint_bytes = conn.execute(
            "SELECT count(*), coalesce(sum(length(thread_id) + length(checkpoint_ns) + length(checkpoint_id)"
            " + coalesce(length(parent_checkpoint_id), 0) + coalesce(length(type), 0) + length(checkpoint)"
            " + length(metadata)), 0) FROM checkpoints").fetchone()
        writes, write_bytes = conn.execute(
            "SELECT count(*), coalesce(sum(length(thread_id) + length(checkpoint_ns) + length(checkpoint_id)"
            " + length(task_id) + length(task_path) + 8 + length(channel) + coalesce(length(type), 0)"
            " + coalesce(length(value), 0)), 0) FROM writes").fetchone()
    finally:
        conn.close()
    work.rows_written = checkpoints + writes
    work.bytes_written = checkpoint_bytes + write_bytes
    work.calls.update({f"SQL {verb}": count for verb, count in statements.items()})
    work.disk_bytes = _tree_bytes(path.parent)
    work.notes.append(f"{checkpoints} checkpoint rows, {writes} write rows")


def _direct(synchronous: str, backend: str = "local") -> Saver:
    @contextlib.contextmanager
    def open_sync(context: Context, work: StoreWork | None) -> Iterator[BaseCheckpointSaver]:
        if backend == "azure":
            settings = Settings(backend="azure", azure_connection_string=context.azurite().connection_string)
            data_dir = None
        else:
            data_dir = context.fresh("stowage")
            settings = Settings(backend="local", data_dir=data_dir, local_synchronous=synchronous)
        stores = Stores.from_settings(settings)
        stores.ensure()
        service = CheckpointService(stores)
        try:
            yield StowageCheckpointSaver(service, "bench" + uuid.uuid4().hex[:6])
            if work is not None:
                _note_cache(service, work)
        finally:
            stores.close()
        if data_dir is not None:
            if work is not None:
                work.disk_bytes = _tree_bytes(data_dir)
            shutil.rmtree(data_dir)

    @contextlib.asynccontextmanager
    async def open_async(context: Context, work: StoreWork | None) -> AsyncIterator[BaseCheckpointSaver]:
        with open_sync(context, work) as saver:
            yield saver

    where = "Azurite" if backend == "azure" else f"local, synchronous={synchronous}"
    return Saver(f"direct-{backend}-{synchronous}", f"Stowage direct saver, {where}", open_sync, open_async)


def _note_cache(service: CheckpointService, work: StoreWork) -> None:
    """The service's per-process cache of immutable reads, when this version has one."""
    stats = getattr(service, "cache_stats", None)
    if callable(stats):
        figures = stats()
        lookups = figures.get("hits", 0) + figures.get("misses", 0)
        rate = f"{figures.get('hits', 0) / lookups:.0%}" if lookups else "n/a"
        work.notes.append(f"cache: {figures.get('hits', 0)} hits / {lookups} lookups ({rate})")


def _served_direct() -> Saver:
    """The direct saver on the data directory the server uses, so both sides of ``remote`` share one store."""
    @contextlib.contextmanager
    def open_sync(context: Context, work: StoreWork | None) -> Iterator[BaseCheckpointSaver]:
        server = context.server()
        stores = Stores.from_settings(Settings(backend="local", data_dir=server.data_dir))
        try:
            yield StowageCheckpointSaver(StorageManager(stores, server.tenant))
        finally:
            stores.close()

    @contextlib.asynccontextmanager
    async def open_async(context: Context, work: StoreWork | None) -> AsyncIterator[BaseCheckpointSaver]:
        with open_sync(context, work) as saver:
            yield saver

    return Saver("direct-served", "Stowage direct saver, on the server's data directory", open_sync, open_async)


def _remote() -> Saver:
    @contextlib.contextmanager
    def open_sync(context: Context, work: StoreWork | None) -> Iterator[BaseCheckpointSaver]:
        server = context.server()
        with RemoteCheckpointSaver(server.url, server.api_key) as saver:
            yield saver

    @contextlib.asynccontextmanager
    async def open_async(context: Context, work: StoreWork | None) -> AsyncIterator[BaseCheckpointSaver]:
        server = context.server()
        async with RemoteCheckpointSaver(server.url, server.api_key) as saver:
            yield saver

    return Saver("remote", "RemoteCheckpointSaver over stowage serve (local)", open_sync, open_async,
                 outside_cpu=lambda context: context.server().cpu_seconds())


def _peer() -> Saver:
    @contextlib.contextmanager
    def open_sync(context: Context, work: StoreWork | None) -> Iterator[BaseCheckpointSaver]:
        if importlib.util.find_spec("azure_functions_langgraph") is None:
            raise Unavailable(f"{PEER_PACKAGE} is not installed in {sys.prefix}; install it with: {PEER_INSTALL}")
        from azure.storage.blob import ContainerClient
        from azure_functions_langgraph.checkpointers import AzureBlobCheckpointSaver

        container = ContainerClient.from_connection_string(context.azurite().connection_string,
                                                           "peer-" + uuid.uuid4().hex[:12])
        container.create_container()
        try:
            # The peer's own protocol types disagree with the SDK's signatures; the SDK client is what it wants.
            yield AzureBlobCheckpointSaver(container_client=cast(Any, container))
            if work is not None:
                blobs = list(container.list_blobs())
                work.blob_puts = len(blobs)  # blobs left, not puts: the peer overwrites some (latest.json)
                work.blob_bytes = sum(blob.size for blob in blobs)
                work.notes.append(f"{len(blobs)} blobs left in the container")
        finally:
            container.delete_container()  # Azurite keeps everything in memory
            container.close()

    return Saver("peer-azure", f"{PEER_PACKAGE} AzureBlobCheckpointSaver, Azurite", open_sync)


# --------------------------------------------------------------------------- variants and rounds


@dataclass(frozen=True)
class Variant:
    name: str
    title: str
    candidate: Saver
    baseline: Saver
    shape: Shape
    mode: str  # "sync" or "async"
    target: str


@dataclass
class Run:
    steps: int
    seconds: float
    cpu_seconds: float


def timed_run(saver: Saver, variant: Variant, context: Context) -> Run:
    """One fresh store: a warm-up invoke, then the timed workload."""
    outside_before = outside_after = 0.0
    if variant.mode == "async":
        async def go() -> tuple[int, float, float, float, float]:
            assert saver.open_async is not None
            async with saver.open_async(context, None) as opened:
                await aworkload(opened, WARM_UP)
                outside = saver.outside_cpu(context) if saver.outside_cpu else 0.0
                cpu, start = time.process_time(), time.perf_counter()
                steps = await aworkload(opened, variant.shape)
                seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
                after = saver.outside_cpu(context) if saver.outside_cpu else 0.0
            return steps, seconds, cpu, outside, after

        steps, seconds, cpu, outside_before, outside_after = asyncio.run(go())
    else:
        assert saver.open is not None
        with saver.open(context, None) as opened:
            workload(opened, WARM_UP)
            if saver.outside_cpu:
                outside_before = saver.outside_cpu(context)
            cpu, start = time.process_time(), time.perf_counter()
            steps = workload(opened, variant.shape)
            seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
            if saver.outside_cpu:
                outside_after = saver.outside_cpu(context)
    return Run(steps, seconds, cpu + outside_after - outside_before)


def counted_run(saver: Saver, variant: Variant, context: Context) -> StoreWork:
    """The workload once more, untimed, with the counters on (sync path: the rows are the same)."""
    assert saver.open is not None
    with counting() as work:
        with saver.open(context, work) as opened:
            work.steps = workload(opened, variant.shape)
    return work


def variants(args: argparse.Namespace) -> dict[str, Variant]:
    small = Shape(args.threads, args.loops, args.invokes)
    azure_shape = Shape(args.azurite_threads, args.loops, args.invokes)
    big = Shape(args.big_threads, args.loops, args.invokes, big=True)
    direct_normal, sqlite_normal = _direct("NORMAL"), _sqlite("NORMAL")
    direct_azure, peer = _direct("NORMAL", "azure"), _peer()
    remote, served = _remote(), _served_direct()
    return {variant.name: variant for variant in (
        Variant("normal", "direct (local) vs SqliteSaver, both synchronous=NORMAL", direct_normal, sqlite_normal,
                small, "sync", ">= 1.0, aim 1.5"),
        Variant("full", "direct (local) vs SqliteSaver, both synchronous=FULL", _direct("FULL"), _sqlite("FULL"),
                small, "sync", ">= 1.0"),
        Variant("azure", "direct on Azurite vs AzureBlobCheckpointSaver on the same Azurite", direct_azure, peer,
                azure_shape, "sync", ">= 3"),
        Variant("remote", "RemoteCheckpointSaver over stowage serve vs the direct saver", remote, served,
                small, "sync", ">= 0.5"),
        Variant("big", "~200 KB state: direct (local) vs SqliteSaver, both NORMAL", direct_normal, sqlite_normal,
                big, "sync", "(no target)"),
        Variant("async", "ainvoke: direct (local) vs AsyncSqliteSaver, both NORMAL", direct_normal, sqlite_normal,
                small, "async", "(no target)"),
        Variant("big-azure", "~200 KB state: direct on Azurite vs AzureBlobCheckpointSaver", direct_azure, peer,
                Shape(max(1, args.azurite_threads // 2), args.loops, args.invokes, big=True), "sync", "(no target)"),
        Variant("async-remote", "ainvoke: RemoteCheckpointSaver vs the direct saver", remote, served,
                small, "async", "(no target)"),
    )}


DEFAULT_VARIANTS = "normal,full,azure,remote,big,async"


@dataclass
class Outcome:
    variant: Variant
    candidate: list[Run] = field(default_factory=list)
    baseline: list[Run] = field(default_factory=list)
    skipped: str | None = None

    def ratios(self) -> list[float]:
        return [(c.steps / c.seconds) / (b.steps / b.seconds) for c, b in zip(self.candidate, self.baseline)]

    def cpu_ratios(self) -> list[float]:
        return [(b.cpu_seconds / b.steps) / (c.cpu_seconds / c.steps) for c, b in zip(self.candidate, self.baseline)
                if c.cpu_seconds > 0]


def run_rounds(selected: list[Variant], rounds: int, context: Context) -> list[Outcome]:
    outcomes = [Outcome(variant) for variant in selected]
    for index in range(rounds):
        for outcome in outcomes:
            if outcome.skipped:
                continue
            variant = outcome.variant
            pair = [("candidate", variant.candidate), ("baseline", variant.baseline)]
            if index % 2:
                pair.reverse()
            try:
                runs = {side: timed_run(saver, variant, context) for side, saver in pair}
            except Unavailable as exc:
                outcome.skipped = str(exc)
                console.print(f"[yellow]skipping {variant.name}: {exc}[/yellow]")
                continue
            outcome.candidate.append(runs["candidate"])
            outcome.baseline.append(runs["baseline"])
            c, b = runs["candidate"], runs["baseline"]
            console.print(f"round {index + 1}/{rounds} {variant.name:>12}: {c.steps / c.seconds:8.0f} vs "
                          f"{b.steps / b.seconds:8.0f} steps/s, ratio {(c.steps / c.seconds) / (b.steps / b.seconds):.2f}")
    return outcomes


def _figure(values: list[float]) -> str:
    if not values:
        return "-"
    middle, low, high = median_range(values)
    return f"{middle:.2f} ({low:.2f}-{high:.2f})"


def report_rounds(outcomes: list[Outcome], rounds: int) -> None:
    table = Table(title=f"Per-round ratios over {rounds} rounds: median (lowest-highest); > 1: candidate better")
    for column in ("variant", "candidate", "baseline", "steps/run", "cand. steps/s", "base steps/s",
                   "ratio (wall)", "ratio (CPU/step)", "target"):
        table.add_column(column, justify="left" if column in ("variant", "candidate", "baseline") else "right")
    for outcome in outcomes:
        variant = outcome.variant
        if outcome.skipped or not outcome.candidate:
            table.add_row(variant.name, variant.candidate.label_for(variant.mode),
                          variant.baseline.label_for(variant.mode), "", "", "",
                          f"skipped: {outcome.skipped}", "", variant.target)
            continue
        c_rate = median_range([r.steps / r.seconds for r in outcome.candidate])[0]
        b_rate = median_range([r.steps / r.seconds for r in outcome.baseline])[0]
        table.add_row(variant.name, variant.candidate.label_for(variant.mode),
                      variant.baseline.label_for(variant.mode), str(variant.shape.steps),
                      f"{c_rate:,.0f}", f"{b_rate:,.0f}", _figure(outcome.ratios()), _figure(outcome.cpu_ratios()),
                      variant.target)
    console.print(table)


def report_work(selected: list[Variant], context: Context) -> None:
    done: dict[tuple[str, Shape], StoreWork | str] = {}
    for variant in selected:
        for saver in (variant.candidate, variant.baseline):
            key = (saver.key, variant.shape)
            if key in done or saver.open is None:
                continue
            try:
                done[key] = counted_run(saver, variant, context)
            except Unavailable as exc:
                done[key] = str(exc)
    table = Table(title="Store work per step (one untimed run each; independent of load)")
    for column in ("saver", "state", "steps", "store calls/step", "rows written/step", "bytes written/step",
                   "blob writes/step", "blob bytes/step", "HTTP requests/step", "on disk/step", "notes"):
        table.add_column(column, justify="left" if column in ("saver", "state", "notes") else "right")
    labels = {saver.key: saver.label for variant in selected for saver in (variant.candidate, variant.baseline)}
    for (saver_key, shape), work in done.items():
        state = "~200 KB" if shape.big else "growing"
        if isinstance(work, str):
            table.add_row(labels[saver_key], state, "", f"skipped: {work}", "", "", "", "", "", "", "")
            continue
        calls = sum(count for name, count in work.calls.items() if not name.startswith("SQL "))
        if any(name.startswith("SQL ") for name in work.calls):
            transactions = work.calls.get("SQL COMMIT", 0)
            statements = sum(count for name, count in work.calls.items() if name.startswith("SQL "))
            call_text = f"{work.per_step(statements):.1f} SQL ({work.per_step(transactions):.1f} commits)"
        else:
            call_text = f"{work.per_step(calls):.1f}" + (
                f" ({', '.join(f'{n} {work.per_step(c):.1f}' for n, c in sorted(work.calls.items()))})" if calls else "")
        table.add_row(labels[saver_key], state, str(work.steps), call_text, f"{work.per_step(work.rows_written):.2f}",
                      f"{work.per_step(work.bytes_written):,.0f}", f"{work.per_step(work.blob_puts):.2f}",
                      f"{work.per_step(work.blob_bytes):,.0f}",
                      f"{work.per_step(work.requests):.2f}" if work.requests else "-",
                      f"{work.per_step(work.disk_bytes):,.0f}" if work.disk_bytes is not None else "-",
                      "; ".join(work.notes))
    console.print(table)
    console.print("Stowage rows: entities inserted/upserted/updated through the table implementations; "
                  "bytes: keys + property values as stored (no base64, no JSON framing). SqliteSaver rows: rows in "
                  "its tables after the run; bytes: the same columns' lengths. On disk: files after close. "
                  "Peer: blob writes = blobs left in its container.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--variants", default=DEFAULT_VARIANTS,
                        help=f"comma-separated; default {DEFAULT_VARIANTS}; also big-azure, async-remote, or 'all'")
    parser.add_argument("--threads", type=int, default=20)
    parser.add_argument("--loops", type=int, default=6)
    parser.add_argument("--invokes", type=int, default=2)
    parser.add_argument("--azurite-threads", type=int, default=4, help="threads for the (slower) Azurite rows")
    parser.add_argument("--big-threads", type=int, default=5, help="threads for the ~200 KB-state rows")
    parser.add_argument("--no-azurite", action="store_true", help="drop the rows that need Azurite")
    parser.add_argument("--no-work", action="store_true", help="skip the store-work counting pass")
    parser.add_argument("--server-log-level", default="info",
                        help="stowage serve's --log-level (info, as shipped, includes the access log)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 2 rounds, 3 threads, 2 loops, 1 Azurite thread, 1 big thread")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.threads, args.loops, args.azurite_threads, args.big_threads = 2, 3, 2, 1, 1
    known = variants(args)
    names = list(known) if args.variants == "all" else [n.strip() for n in args.variants.split(",") if n.strip()]
    unknown = [name for name in names if name not in known]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}: choose from {', '.join(known)} or 'all'")
    if args.no_azurite:
        names = [name for name in names if "azure" not in name]
    if args.rounds < 1:
        raise SystemExit("--rounds must be at least 1")
    selected = [known[name] for name in names]

    console.print(f"before: {machine_load()}")
    if args.rounds < 5:
        console.print(f"[yellow]{args.rounds} rounds: a smoke run; quote figures from >= 5 rounds[/yellow]")
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        context = Context(Path(tmp), stack, args.server_log_level)
        outcomes = run_rounds(selected, args.rounds, context)
        console.print(f"after the rounds: {machine_load()}")
        report_rounds(outcomes, args.rounds)
        if not args.no_work:
            report_work([o.variant for o in outcomes if not o.skipped], context)


if __name__ == "__main__":
    main()
