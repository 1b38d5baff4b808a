"""LangGraph checkpoint savers over Stowage: one direct, one over HTTP.

* :class:`StowageCheckpointSaver` calls :class:`shared.checkpoints.CheckpointService`
  in-process, for code that reaches the storage itself (a graph running inside
  the function app, a worker with the storage settings)::

      storage = StorageManager.from_env(tenant="acme")
      graph = builder.compile(checkpointer=StowageCheckpointSaver(storage))

* :class:`RemoteCheckpointSaver` talks to ``/api/v1/checkpoints`` with an API key,
  for agents anywhere else::

      with RemoteCheckpointSaver("https://stowage.example", api_key) as saver:
          graph = builder.compile(checkpointer=saver)

Both implement every method of ``BaseCheckpointSaver``, sync and async, including
``delete_for_runs``, ``copy_thread`` and ``prune``. The direct saver's async
methods run the blocking storage calls in a worker thread (``asyncio.to_thread``);
the remote saver uses ``httpx.AsyncClient``. The direct saver's sync ``put_writes``
waits up to ``writes_linger`` (10 ms) for the next ``put`` of the thread to carry its
rows in the same atomic batch (LangGraph stores both right after each other, from two
threads), so a step costs one batch instead of two. The remote saver's sync ``put_writes``
likewise waits for the next ``put`` of the thread to carry its writes in the same request
(one HTTP request and one atomic batch per step); held writes are sent alone before any
read of the thread, any async call and ``close``, so none is lost or overtaken. Both
honour ``thread_id``, ``checkpoint_ns`` and ``checkpoint_id`` in ``config["configurable"]``
as LangGraph's own savers do, and make versions like the SQLite saver.

Values are serialised by the saver's ``serde`` (LangGraph's ``JsonPlusSerializer``
unless given): the checkpoint without its channel values, each new channel value
and each pending write are stored as separate typed values; the service keeps small
ones inline in the checkpoint row and stores a large one once per version.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from http.cookiejar import CookieJar
from typing import Any, Self
from urllib.parse import quote

import httpx
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    WRITES_IDX_MAP,
    BaseCheckpointSaver,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
    get_checkpoint_id,
    get_serializable_checkpoint_metadata,
)
from langgraph.checkpoint.serde.base import SerializerProtocol

from shared.domains.checkpoints.models import PendingWrite, StoredCheckpoint, TypedValue
from shared.domains.checkpoints.service import CheckpointService
from shared.errors import (
    BackendUnavailable,
    Busy,
    Conflict,
    InvalidInput,
    NotFound,
    PreconditionFailed,
    StowageError,
    TooLarge,
    Unauthorized,
)
from shared.keys import check_tenant
from shared.manager import StorageManager

_PAGE = 100


# --------------------------------------------------------------------------- shared by both savers


@dataclass(frozen=True)
class _Put:
    """A LangGraph put, split into what the checkpoint service stores."""

    thread_id: str
    checkpoint_ns: str
    checkpoint_id: str
    parent_checkpoint_id: str | None
    checkpoint: TypedValue
    channel_versions: dict[str, str]
    new_values: dict[str, TypedValue]
    metadata: dict[str, Any]

    def config(self) -> RunnableConfig:
        return _config(self.thread_id, self.checkpoint_ns, self.checkpoint_id)


def _config(thread_id: str, checkpoint_ns: str, checkpoint_id: str) -> RunnableConfig:
    return {"configurable": {"thread_id": thread_id, "checkpoint_ns": checkpoint_ns, "checkpoint_id": checkpoint_id}}


def _typed(pair: tuple[str, bytes]) -> TypedValue:
    return TypedValue(pair[0], bytes(pair[1]))


def _split_put(serde: SerializerProtocol, config: RunnableConfig, checkpoint: Checkpoint,
               metadata: CheckpointMetadata, new_versions: ChannelVersions) -> _Put:
    configurable = config["configurable"]
    values = checkpoint["channel_values"]
    versions = checkpoint["channel_versions"]
    held: dict[str, str] = {}
    for channel in values:
        version = new_versions.get(channel, versions.get(channel))
        if version is not None:
            held[channel] = str(version)
    fresh = {channel: _typed(serde.dumps_typed(values[channel])) for channel in new_versions if channel in values}
    without_values = {key: value for key, value in checkpoint.items() if key != "channel_values"}
    return _Put(
        thread_id=str(configurable["thread_id"]),
        checkpoint_ns=str(configurable.get("checkpoint_ns", "")),
        checkpoint_id=checkpoint["id"],
        parent_checkpoint_id=configurable.get("checkpoint_id"),
        checkpoint=_typed(serde.dumps_typed(without_values)),
        channel_versions=held,
        new_values=fresh,
        metadata=dict(get_serializable_checkpoint_metadata(config, metadata)),
    )


def _split_writes(serde: SerializerProtocol, writes: Sequence[tuple[str, Any]]) -> list[tuple[int, str, TypedValue]]:
    """LangGraph's rule: special channels (errors, interrupts...) get fixed negative indexes."""
    return [(WRITES_IDX_MAP.get(channel, idx), channel, _typed(serde.dumps_typed(value)))
            for idx, (channel, value) in enumerate(writes)]


def _tuple(serde: SerializerProtocol, stored: StoredCheckpoint) -> CheckpointTuple:
    checkpoint = serde.loads_typed((stored.checkpoint.type, stored.checkpoint.data))
    checkpoint["channel_values"] = {channel: serde.loads_typed((value.type, value.data))
                                    for channel, value in stored.values.items()}
    parent = (_config(stored.thread_id, stored.checkpoint_ns, stored.parent_checkpoint_id)
              if stored.parent_checkpoint_id else None)
    return CheckpointTuple(
        config=_config(stored.thread_id, stored.checkpoint_ns, stored.checkpoint_id),
        checkpoint=checkpoint,
        metadata=CheckpointMetadata(**stored.metadata),  # type: ignore[typeddict-item]  # user keys travel too
        parent_config=parent,
        pending_writes=[(w.task_id, w.channel, serde.loads_typed((w.value.type, w.value.data)))
                        for w in stored.pending_writes],
    )


def _matches(metadata: Mapping[str, Any], wanted: Mapping[str, Any] | None) -> bool:
    return not wanted or all(metadata.get(key) == value for key, value in wanted.items())


def _next_version(current: str | int | None) -> str:
    """Like the SQLite saver: a zero-padded counter and a random suffix, so forks never reuse a version."""
    if current is None:
        number = 0
    elif isinstance(current, int):
        number = current
    else:
        number = int(str(current).split(".")[0])
    return f"{number + 1:032}.{random.random():016}"


# --------------------------------------------------------------------------- direct saver


class StowageCheckpointSaver(BaseCheckpointSaver[str]):
    """A LangGraph checkpointer over the checkpoint service of one tenant, in-process.

    Give a :class:`StorageManager` (its tenant is used), or a
    :class:`CheckpointService` and the tenant.
    """

    #: Seconds a task's pending writes wait for the next checkpoint's put to carry them in one batch.
    WRITES_LINGER = 0.01

    def __init__(self, storage: StorageManager | CheckpointService, tenant: str | None = None, *,
                 serde: SerializerProtocol | None = None, writes_linger: float = WRITES_LINGER) -> None:
        """``writes_linger``: LangGraph stores a step's pending writes and, right after, the next
        checkpoint, from two threads; a put_writes waits up to this long (seconds) for that put
        to carry its rows in the same atomic batch (one commit, one round trip), then writes
        alone. Only the background call waits; 0 writes at once."""
        super().__init__(serde=serde)
        if not isinstance(writes_linger, (int, float)) or not 0 <= writes_linger <= 1:
            raise InvalidInput("writes_linger must be from 0 to 1 second")
        self.writes_linger = float(writes_linger)
        if isinstance(storage, StorageManager):
            if tenant is not None and tenant != storage.tenant:
                raise InvalidInput(f"the StorageManager is for tenant {storage.tenant!r}, not {tenant!r}")
            self._service, self.tenant = CheckpointService(storage.stores), storage.tenant
        elif isinstance(storage, CheckpointService):
            if tenant is None:
                raise InvalidInput("give the tenant along with a CheckpointService")
            self._service, self.tenant = storage, check_tenant(tenant)
        else:
            raise TypeError("storage must be a StorageManager or a CheckpointService")

    # -- sync

    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        configurable = config["configurable"]
        try:
            stored = self._service.get(self.tenant, str(configurable["thread_id"]),
                                       configurable.get("checkpoint_ns", ""), get_checkpoint_id(config))
        except NotFound:
            return None
        return _tuple(self.serde, stored)

    def _pages(self, config: RunnableConfig | None, filter: dict[str, Any] | None,
               before: RunnableConfig | None, limit: int | None) -> Iterator[list[CheckpointTuple]]:
        """Matching tuples, one storage page at a time (newest first within each thread)."""
        if limit is not None and limit <= 0:
            return
        remaining = limit
        before_id = get_checkpoint_id(before) if before else None
        if config is not None and get_checkpoint_id(config):
            found = self.get_tuple(config)
            if found is not None and _matches(found.metadata, filter) and (
                    before_id is None or found.config["configurable"]["checkpoint_id"] < before_id):
                yield [found]
            return
        for thread_id in self._thread_ids(config):
            namespace = config["configurable"].get("checkpoint_ns") if config is not None else None
            token: str | None = None
            while True:
                size = min(remaining, _PAGE) if remaining is not None else _PAGE
                try:
                    page = self._service.list(self.tenant, thread_id, checkpoint_ns=namespace, before=before_id,
                                              metadata_filter=filter, limit=size, continuation=token)
                except NotFound:
                    break
                tuples = [_tuple(self.serde, stored) for stored in page.items]
                if remaining is not None:
                    remaining -= len(tuples)
                yield tuples
                if remaining == 0:
                    return
                token = page.continuation
                if not token:
                    break

    def _thread_ids(self, config: RunnableConfig | None) -> Iterator[str]:
        if config is not None:
            yield str(config["configurable"]["thread_id"])
            return
        token: str | None = None
        while True:
            page = self._service.threads(self.tenant, limit=1000, continuation=token)
            yield from (thread.thread_id for thread in page.items)
            token = page.continuation
            if not token:
                return

    def list(self, config: RunnableConfig | None, *, filter: dict[str, Any] | None = None,
             before: RunnableConfig | None = None, limit: int | None = None) -> Iterator[CheckpointTuple]:
        for page in self._pages(config, filter, before, limit):
            yield from page

    def put(self, config: RunnableConfig, checkpoint: Checkpoint, metadata: CheckpointMetadata,
            new_versions: ChannelVersions) -> RunnableConfig:
        put = _split_put(self.serde, config, checkpoint, metadata, new_versions)
        self._service.put(self.tenant, put.thread_id, put.checkpoint_ns, put.checkpoint_id, put.checkpoint,
                          channel_versions=put.channel_versions, new_values=put.new_values,
                          metadata=put.metadata, parent_checkpoint_id=put.parent_checkpoint_id)
        return put.config()

    def put_writes(self, config: RunnableConfig, writes: Sequence[tuple[str, Any]], task_id: str,
                   task_path: str = "") -> None:
        self._put_writes(config, writes, task_id, task_path, self.writes_linger)

    def _put_writes(self, config: RunnableConfig, writes: Sequence[tuple[str, Any]], task_id: str, task_path: str,
                    linger: float) -> None:
        configurable = config["configurable"]
        self._service._put_writes(self.tenant, str(configurable["thread_id"]), configurable.get("checkpoint_ns", ""),
                                  str(configurable["checkpoint_id"]), task_id, _split_writes(self.serde, writes),
                                  task_path=task_path, linger=linger)

    def delete_thread(self, thread_id: str) -> None:
        try:
            self._service.delete_thread(self.tenant, str(thread_id))
        except NotFound:
            pass

    def delete_for_runs(self, run_ids: Sequence[str]) -> None:
        try:
            self._service.delete_for_runs(self.tenant, [str(run_id) for run_id in run_ids])
        except NotFound:
            pass

    def copy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        try:
            self._service.copy_thread(self.tenant, str(source_thread_id), str(target_thread_id))
        except NotFound:
            pass  # nothing to copy

    def prune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        try:
            self._service.prune(self.tenant, [str(thread_id) for thread_id in thread_ids], strategy)
        except NotFound:
            pass

    def get_next_version(self, current: str | None, channel: None) -> str:
        return _next_version(current)

    # -- async: the same calls, off the event loop

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        return await asyncio.to_thread(self.get_tuple, config)

    async def alist(self, config: RunnableConfig | None, *, filter: dict[str, Any] | None = None,
                    before: RunnableConfig | None = None, limit: int | None = None) -> AsyncIterator[CheckpointTuple]:
        pages = self._pages(config, filter, before, limit)
        while (page := await asyncio.to_thread(next, pages, None)) is not None:
            for item in page:
                yield item

    async def aput(self, config: RunnableConfig, checkpoint: Checkpoint, metadata: CheckpointMetadata,
                   new_versions: ChannelVersions) -> RunnableConfig:
        return await asyncio.to_thread(self.put, config, checkpoint, metadata, new_versions)

    async def aput_writes(self, config: RunnableConfig, writes: Sequence[tuple[str, Any]], task_id: str,
                          task_path: str = "") -> None:
        # No linger: the event loop's default executor has few threads, and writes waiting in
        # them for the put could keep the put itself from starting (a step of many tasks).
        await asyncio.to_thread(self._put_writes, config, writes, task_id, task_path, 0.0)

    async def adelete_thread(self, thread_id: str) -> None:
        await asyncio.to_thread(self.delete_thread, thread_id)

    async def adelete_for_runs(self, run_ids: Sequence[str]) -> None:
        await asyncio.to_thread(self.delete_for_runs, run_ids)

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        await asyncio.to_thread(self.copy_thread, source_thread_id, target_thread_id)

    async def aprune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        await asyncio.to_thread(self.prune, thread_ids, strategy=strategy)


# --------------------------------------------------------------------------- remote saver


_ERRORS: dict[int, type[StowageError]] = {
    400: InvalidInput, 401: Unauthorized, 403: Unauthorized, 404: NotFound, 409: Conflict,
    412: PreconditionFailed, 413: TooLarge, 422: InvalidInput,
    # Retried statuses: still answered after the last retry, they are the one "busy, send again" error.
    429: Busy, 503: Busy,
}
_RETRY_STATUSES = frozenset({429, 503})


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _value_json(value: TypedValue) -> dict[str, str]:
    return {"type": value.type, "data": _b64(value.data)}


def _value_from(document: dict[str, Any]) -> TypedValue:
    return TypedValue(document["type"], base64.b64decode(document["data"]))


def _stored_from(document: dict[str, Any]) -> StoredCheckpoint:
    return StoredCheckpoint(
        thread_id=document["thread_id"],
        checkpoint_ns=document["checkpoint_ns"],
        checkpoint_id=document["checkpoint_id"],
        parent_checkpoint_id=document.get("parent_checkpoint_id"),
        checkpoint=_value_from(document["checkpoint"]),
        metadata=document.get("metadata") or {},
        channel_versions=document.get("channel_versions") or {},
        values={channel: _value_from(value) for channel, value in (document.get("values") or {}).items()},
        pending_writes=[PendingWrite(w["task_id"], w["channel"], _value_from(w["value"]), w["idx"],
                                     w.get("task_path", "")) for w in document.get("pending_writes") or []],
        created_at=document.get("created_at", ""),
    )


def _segment(text: str) -> str:
    return quote(str(text), safe="")


@dataclass(frozen=True)
class _Call:
    """One HTTP request; ``missing_ok``: a 404 answer means "nothing there", not an error;
    ``answer``: whether the caller reads the answer's body (else it is not parsed)."""

    method: str
    path: str
    params: dict[str, Any] | None = None
    body: dict[str, Any] | None = None
    missing_ok: bool = False
    answer: bool = True

    def content(self) -> bytes | None:
        """The body as JSON bytes, made once per call (retries send the same bytes)."""
        if self.body is None:
            return None
        return json.dumps(self.body, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


class _NoCookies(CookieJar):
    """The API authenticates with a key and sets no cookies: skip httpx's cookie parsing of every answer."""

    def extract_cookies(self, response: Any, request: Any) -> None:
        return None


_JSON_HEADERS = {"Content-Type": "application/json"}
#: Pending writes a put carries along at most (bytes of serialised values); larger ones go alone.
_CARRY_BYTES = 1024 * 1024
#: A held put_writes waits at most this many lingers, and past the first only while a put of its thread is in flight
#: or ended lately (:meth:`RemoteCheckpointSaver._put_is_coming`). LangGraph chains its puts, so the one that carries a step's writes starts only
#: when the previous one has its answer: two round trips, which on a loaded machine reach 100-300 ms.
_MAX_LINGER_ROUNDS = 100
#: After this many held writes in a row that no put came for, a thread's writes go at once for the next _LINGER_PAUSE.
_LINGER_MISSES = 2
_LINGER_PAUSE = 50


@dataclass(eq=False)
class _HeldWrites:
    """A sync put_writes waiting for the next put of its thread to carry it (see RemoteCheckpointSaver)."""

    key: tuple[str, str]
    checkpoint_id: str
    task_id: str
    task_path: str
    writes: list[dict[str, Any]]
    size: int
    event: threading.Event
    taken: bool = False
    carried: bool = False
    error: BaseException | None = None
    settled: bool = field(default=False)

    def body(self) -> dict[str, Any]:
        return {"task_id": self.task_id, "task_path": self.task_path, "writes": self.writes}

    def settle(self, error: BaseException | None = None, *, carried: bool = False) -> None:
        self.error, self.carried, self.settled = error, carried, True
        self.event.set()


class RemoteCheckpointSaver(BaseCheckpointSaver[str]):
    """A LangGraph checkpointer over Stowage's HTTP API, for agents that run elsewhere.

    One pooled ``httpx.Client`` serves the sync methods and one ``httpx.AsyncClient``
    (made on first async use, bound to that event loop) the async ones. Answers
    429 and 503 are retried up to ``max_retries`` times with exponential backoff
    from ``backoff_seconds``, honouring ``Retry-After`` (still answered after the
    last retry: :class:`~shared.errors.Busy`); every other error raises
    the matching :mod:`shared.errors` exception. Close it (or use it as a context
    manager) when done.

    One request per step: LangGraph's sync loop stores a task's pending writes and,
    right after, the next checkpoint, from two background threads. A sync
    ``put_writes`` is *held* up to ``writes_linger`` (10 ms; longer only while a put
    of its thread is in flight, counted from before it serialises its values, or ended
    less than a linger ago, or less than that put took when it took longer, as on a
    loaded machine; up to 100 lingers) for the next ``put`` of the same
    thread and namespace to carry it: that put sends the writes of its parent
    checkpoint in its own request, and the server stores both in one atomic batch.
    ``put_writes`` still returns only once its writes are stored (carried, or sent
    alone when no put came), and raises their own error; a carried request the
    server refuses as invalid is sent again as separate requests, so each call gets
    its own answer. Held writes are sent alone, in the order they came, before
    anything that must see them or could overtake them: a read, list, delete, copy
    or prune of the thread, an async call, ``close``. Writes over 1 MiB, the async
    methods and ``writes_linger=0`` never wait. Two held writes in a row that no put
    came for (a graph whose puts wait for their writes, e.g. delta channels) stop the
    thread's writes waiting for the next 50; a write a slow put did not reach in 100
    lingers is sent alone but does not count as such a miss.
    """

    #: Seconds a sync put_writes waits for the next put of its thread to carry it in one request.
    WRITES_LINGER = 0.01

    def __init__(self, base_url: str, api_key: str, *, serde: SerializerProtocol | None = None,
                 timeout: float = 60.0, max_retries: int = 5, backoff_seconds: float = 0.25,
                 max_backoff_seconds: float = 30.0, writes_linger: float = WRITES_LINGER) -> None:
        super().__init__(serde=serde)
        if not api_key:
            raise InvalidInput("an API key is needed; create one with `stowage keys create`")
        if max_retries < 0 or backoff_seconds < 0:
            raise InvalidInput("max_retries and backoff_seconds must not be negative")
        if not isinstance(writes_linger, (int, float)) or not 0 <= writes_linger <= 1:
            raise InvalidInput("writes_linger must be from 0 to 1 second")
        self.writes_linger = float(writes_linger)
        # (thread_id, checkpoint_ns) -> held put_writes, in the order they came
        self._held: dict[tuple[str, str], list[_HeldWrites]] = {}
        self._puts_in_flight: dict[tuple[str, str], int] = {}
        # (thread_id, checkpoint_ns) -> (time.monotonic() the last put of the key ended, the seconds it took)
        self._put_ended: dict[tuple[str, str], tuple[float, float]] = {}
        # (thread_id, checkpoint_ns) -> (held writes in a row no put carried, writes left to send at once)
        self._linger_state: dict[tuple[str, str], tuple[int, int]] = {}
        self._held_lock = threading.Lock()
        #: Makes the event a held put_writes waits on (tests hook it to know a write is held).
        self.make_event: Callable[[], threading.Event] = threading.Event
        self.base_url = base_url.rstrip("/") + "/api/v1/checkpoints"
        self._headers = {"Authorization": f"Bearer {api_key}"}
        self._timeout = timeout
        self.max_retries = max_retries
        self.backoff_seconds = backoff_seconds
        self.max_backoff_seconds = max_backoff_seconds
        self._client = httpx.Client(base_url=self.base_url, headers=self._headers, timeout=timeout,
                                    cookies=_NoCookies())
        self._async_client: httpx.AsyncClient | None = None
        self._async_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"RemoteCheckpointSaver({self.base_url!r})"  # never the API key

    # -- lifecycle

    def close(self) -> None:
        """Send held writes, then close the sync client (async code: use ``aclose``, which closes both)."""
        try:
            self._flush()
        finally:
            self._client.close()

    async def aclose(self) -> None:
        """Send held writes, then close both clients."""
        try:
            await asyncio.to_thread(self._flush)
        finally:
            self._client.close()
        if self._async_client is not None:
            await self._async_client.aclose()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _async(self) -> httpx.AsyncClient:
        with self._async_lock:
            if self._async_client is None:
                self._async_client = httpx.AsyncClient(base_url=self.base_url, headers=self._headers,
                                                       cookies=_NoCookies(),
                                                       timeout=self._timeout)
            return self._async_client

    # -- transport

    def _delay(self, attempt: int, response: httpx.Response) -> float:
        retry_after = response.headers.get("Retry-After")
        if retry_after:
            try:
                seconds = float(retry_after)
            except ValueError:
                try:
                    seconds = parsedate_to_datetime(retry_after).timestamp() - time.time()
                except (TypeError, ValueError):
                    seconds = self.backoff_seconds * 2**attempt
            return min(max(seconds, 0.0), self.max_backoff_seconds)
        delay: float = self.backoff_seconds * 2**attempt * (0.5 + random.random() / 2)
        return min(delay, self.max_backoff_seconds)

    def _result(self, call: _Call, response: httpx.Response) -> Any:
        if response.status_code == 404 and call.missing_ok:
            return None
        if response.is_success:
            return response.json() if call.answer and response.content else {}
        try:
            detail = response.json().get("detail") or response.text
        except ValueError:
            detail = response.text
        error = _ERRORS.get(response.status_code, BackendUnavailable)
        raise error(f"{call.method} {call.path}: {response.status_code} {detail}")

    def _send(self, call: _Call) -> Any:
        content = call.content()
        headers = _JSON_HEADERS if content is not None else None
        for attempt in range(self.max_retries + 1):
            try:
                response = self._client.request(call.method, call.path, params=call.params, content=content,
                                                headers=headers)
            except httpx.TransportError as exc:
                raise BackendUnavailable(f"{call.method} {call.path}: {self.base_url} did not answer: {exc}") from exc
            if response.status_code not in _RETRY_STATUSES or attempt == self.max_retries:
                break
            time.sleep(self._delay(attempt, response))
        return self._result(call, response)

    async def _asend(self, call: _Call) -> Any:
        if self._held:  # sync writes held for a put: send them first, never overtaken (rare: mixed use)
            await asyncio.to_thread(self._flush)
        client = self._async()
        content = call.content()
        headers = _JSON_HEADERS if content is not None else None
        for attempt in range(self.max_retries + 1):
            try:
                response = await client.request(call.method, call.path, params=call.params, content=content,
                                                headers=headers)
            except httpx.TransportError as exc:
                raise BackendUnavailable(f"{call.method} {call.path}: {self.base_url} did not answer: {exc}") from exc
            if response.status_code not in _RETRY_STATUSES or attempt == self.max_retries:
                break
            await asyncio.sleep(self._delay(attempt, response))
        return self._result(call, response)

    # -- requests

    @staticmethod
    def _get_call(config: RunnableConfig) -> _Call:
        configurable = config["configurable"]
        thread = _segment(configurable["thread_id"])
        params = {"checkpoint_ns": configurable.get("checkpoint_ns", "")}
        checkpoint_id = get_checkpoint_id(config)
        path = (f"/threads/{thread}/checkpoints/{_segment(checkpoint_id)}" if checkpoint_id
                else f"/threads/{thread}/latest")
        return _Call("GET", path, params, missing_ok=True)

    def _put_call(self, config: RunnableConfig, checkpoint: Checkpoint, metadata: CheckpointMetadata,
                  new_versions: ChannelVersions) -> tuple[_Call, _Put]:
        put = _split_put(self.serde, config, checkpoint, metadata, new_versions)
        body = {
            "parent_checkpoint_id": put.parent_checkpoint_id,
            "checkpoint": _value_json(put.checkpoint),
            "metadata": put.metadata,
            "channel_versions": put.channel_versions,
            "new_values": {channel: _value_json(value) for channel, value in put.new_values.items()},
        }
        path = f"/threads/{_segment(put.thread_id)}/checkpoints/{_segment(put.checkpoint_id)}"
        return _Call("PUT", path, {"checkpoint_ns": put.checkpoint_ns}, body, answer=False), put

    def _held_writes(self, config: RunnableConfig, writes: Sequence[tuple[str, Any]], task_id: str,
                     task_path: str) -> _HeldWrites:
        configurable = config["configurable"]
        split = _split_writes(self.serde, writes)
        return _HeldWrites(
            key=(str(configurable["thread_id"]), str(configurable.get("checkpoint_ns", ""))),
            checkpoint_id=str(configurable["checkpoint_id"]), task_id=str(task_id), task_path=task_path,
            writes=[{"idx": idx, "channel": channel, "value": _value_json(value)} for idx, channel, value in split],
            size=sum(len(value.data) for _, _, value in split), event=self.make_event())

    @staticmethod
    def _writes_call(held: _HeldWrites) -> _Call:
        thread_id, checkpoint_ns = held.key
        path = (f"/threads/{_segment(thread_id)}/checkpoints/{_segment(held.checkpoint_id)}"
                f"/writes/{_segment(held.task_id)}")
        return _Call("PUT", path, {"checkpoint_ns": checkpoint_ns},
                     {"task_path": held.task_path, "writes": held.writes}, answer=False)

    # -- held writes (one request per step; see the class docstring)

    def _may_linger(self, key: tuple[str, str]) -> bool:
        with self._held_lock:
            misses, left = self._linger_state.get(key, (0, 0))
            if misses < _LINGER_MISSES:
                return True
            if left > 0:
                self._linger_state[key] = (misses, left - 1)
                return False
            self._linger_state[key] = (_LINGER_MISSES - 1, 0)  # try once more
            return True

    def _lingered(self, key: tuple[str, str], carried: bool, no_put_came: bool) -> None:
        """Count a held write that no put came for (a graph whose puts wait for their writes); one that a
        slow put did not reach within _MAX_LINGER_ROUNDS is no sign of that and leaves the count as it is."""
        with self._held_lock:
            if carried:
                self._linger_state.pop(key, None)
                return
            if not no_put_came:
                return
            if len(self._linger_state) >= 10_000:
                self._linger_state.clear()
            misses = self._linger_state.get(key, (0, 0))[0] + 1
            self._linger_state[key] = (misses, _LINGER_PAUSE if misses >= _LINGER_MISSES else 0)

    def _take(self, wanted: Callable[[tuple[str, str]], bool]) -> list[_HeldWrites]:
        """The held writes of the keys ``wanted`` accepts, in the order they came, off the queue."""
        taken: list[_HeldWrites] = []
        with self._held_lock:
            for key in [key for key in self._held if wanted(key)]:
                taken.extend(self._held.pop(key))
        for held in taken:
            held.taken = True
        return taken

    def _take_for_parent(self, key: tuple[str, str], parent_checkpoint_id: str | None) -> list[_HeldWrites]:
        """The held writes of ``key`` for this checkpoint (up to _CARRY_BYTES), off the queue, in order."""
        taken: list[_HeldWrites] = []
        size = 0
        with self._held_lock:
            held_here = self._held.get(key)
            if not held_here or parent_checkpoint_id is None:
                return taken
            for held in list(held_here):
                if held.checkpoint_id == parent_checkpoint_id and size + held.size <= _CARRY_BYTES:
                    held_here.remove(held)
                    held.taken = True
                    taken.append(held)
                    size += held.size
            if not held_here:
                del self._held[key]
        return taken

    def _send_alone(self, taken: Sequence[_HeldWrites]) -> None:
        """Send taken writes one request each, in order; each writer gets its own answer."""
        for index, held in enumerate(taken):
            try:
                self._send(self._writes_call(held))
            except BaseException as exc:  # raised again in the writer's own thread
                held.settle(exc)
                if not isinstance(exc, Exception):  # interrupted: the rest must not wait forever
                    for rest in taken[index + 1:]:
                        rest.settle(Busy("sending these writes was interrupted; send them again"))
                    raise
            else:
                held.settle()

    def _flush(self, thread_id: str | None = None) -> None:
        """Send the held writes (of one thread, or all) alone, before a call that must see them."""
        if self._held:
            self._send_alone(self._take(lambda key: thread_id is None or key[0] == thread_id))

    def _put_carrying(self, call: _Call, put: _Put) -> None:
        """Send a put, carrying its thread's held writes for its parent checkpoint in the same request."""
        key = (put.thread_id, put.checkpoint_ns)
        taken: list[_HeldWrites] = []
        try:
            # Only the parent's writes; writes of a later checkpoint stay held for the put that follows it
            # (LangGraph chains its puts, so they often lag behind the steps).
            taken = self._take_for_parent(key, put.parent_checkpoint_id) if self._held else []
            carry = taken
            if not carry:
                self._send(call)
                return
            assert call.body is not None
            combined = _Call(call.method, call.path, call.params,
                             {**call.body, "writes": [held.body() for held in carry]}, answer=False)
            try:
                self._send(combined)
            except (InvalidInput, TooLarge):
                # Refused as a whole (nothing stored): each on its own, so each call gets its own answer.
                self._send_alone(carry)
                self._send(call)
            except BaseException as exc:
                for held in carry:
                    held.settle(exc)
                raise
            else:
                for held in carry:
                    held.settle(carried=True)
        finally:
            for held in taken:  # interrupted halfway: no writer waits forever
                if not held.settled:
                    held.settle(Busy("the put carrying these writes was interrupted; send them again"))

    def _put_started(self, key: tuple[str, str]) -> float:
        """Count a put of ``key`` in flight, from before its values are serialised; returns its start time."""
        with self._held_lock:
            self._puts_in_flight[key] = self._puts_in_flight.get(key, 0) + 1
        return time.monotonic()

    def _put_done(self, key: tuple[str, str], started: float) -> None:
        """The put of ``key`` that started at ``started`` is over (stored or failed): note when, and how long it took."""
        now = time.monotonic()
        with self._held_lock:
            left = self._puts_in_flight.pop(key) - 1
            if left:
                self._puts_in_flight[key] = left
            if len(self._put_ended) >= 10_000:
                self._put_ended.clear()
            self._put_ended[key] = (now, now - started)

    def _put_is_coming(self, key: tuple[str, str]) -> bool:
        """Whether a put of ``key`` is in flight or the last one ended lately (the caller holds ``_held_lock``).

        LangGraph starts the next put of a thread as soon as the previous one has its answer, so
        "lately" is a linger, or as long as that put took when longer: on a loaded machine the
        thread that makes the next put waits as long to be scheduled as the last put waited.
        """
        if self._puts_in_flight.get(key):
            return True
        ended, took = self._put_ended.get(key, (-1e9, 0.0))
        return time.monotonic() - ended <= max(self.writes_linger, took)

    def _hold(self, held: _HeldWrites) -> None:
        """Wait for a put to carry ``held``; send it alone when none came. Returns once it is stored."""
        key = held.key
        with self._held_lock:
            self._held.setdefault(key, []).append(held)
        no_put_came = False
        for _ in range(_MAX_LINGER_ROUNDS):
            if held.event.wait(self.writes_linger):
                break
            with self._held_lock:
                # LangGraph chains its puts: one of them in flight, or one that just ended (the next
                # follows at once), means the put that carries these writes is on its way.
                if not self._put_is_coming(key):
                    no_put_came = True
                    break
        if not held.taken:
            # No put came: send what the thread holds, in order (this one included).
            self._send_alone(self._take(lambda other: other == key))
        held.event.wait()  # taken by a put or a flush, which settles it whatever happens
        self._lingered(key, held.carried, no_put_came)
        if held.error is not None:
            raise held.error

    @staticmethod
    def _list_call(thread_id: str, config: RunnableConfig | None, filter: dict[str, Any] | None,
                   before_id: str | None, size: int, token: str | None) -> _Call:
        params: dict[str, Any] = {"limit": size}
        namespace = config["configurable"].get("checkpoint_ns") if config is not None else None
        if namespace is not None:
            params["checkpoint_ns"] = namespace
        if before_id:
            params["before"] = before_id
        if filter:
            params["filter"] = json.dumps(filter)
        if token:
            params["continuation"] = token
        return _Call("GET", f"/threads/{_segment(thread_id)}/checkpoints", params, missing_ok=True)

    @staticmethod
    def _threads_call(token: str | None) -> _Call:
        return _Call("GET", "/threads", {"limit": 1000, **({"continuation": token} if token else {})})

    @staticmethod
    def _delete_thread_calls(thread_id: str) -> list[_Call]:
        return [_Call("DELETE", f"/threads/{_segment(thread_id)}", missing_ok=True)]

    @staticmethod
    def _delete_runs_calls(run_ids: Sequence[str]) -> list[_Call]:
        unique = list(dict.fromkeys(map(str, run_ids)))
        return [_Call("POST", "/runs/delete", body={"run_ids": unique[i:i + _PAGE]}, missing_ok=True)
                for i in range(0, len(unique), _PAGE)]

    @staticmethod
    def _copy_calls(source_thread_id: str, target_thread_id: str) -> list[_Call]:
        return [_Call("POST", f"/threads/{_segment(source_thread_id)}/copy",
                      body={"target_thread_id": str(target_thread_id)}, missing_ok=True)]

    @staticmethod
    def _prune_calls(thread_ids: Sequence[str], strategy: str) -> list[_Call]:
        return [_Call("POST", f"/threads/{_segment(thread_id)}/prune", body={"strategy": strategy}, missing_ok=True)
                for thread_id in dict.fromkeys(map(str, thread_ids))]

    # -- sync

    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        self._flush(str(config["configurable"]["thread_id"]))
        document = self._send(self._get_call(config))
        return None if document is None else _tuple(self.serde, _stored_from(document))

    def list(self, config: RunnableConfig | None, *, filter: dict[str, Any] | None = None,
             before: RunnableConfig | None = None, limit: int | None = None) -> Iterator[CheckpointTuple]:
        if limit is not None and limit <= 0:
            return
        self._flush(None if config is None else str(config["configurable"]["thread_id"]))
        before_id = get_checkpoint_id(before) if before else None
        if config is not None and get_checkpoint_id(config):
            found = self.get_tuple(config)
            if found is not None and _matches(found.metadata, filter) and (
                    before_id is None or found.config["configurable"]["checkpoint_id"] < before_id):
                yield found
            return
        remaining = limit
        for thread_id in self._thread_ids(config):
            token = None
            while True:
                size = min(remaining, _PAGE) if remaining is not None else _PAGE
                document = self._send(self._list_call(thread_id, config, filter, before_id, size, token))
                if document is None:
                    break
                for item in document["items"]:
                    yield _tuple(self.serde, _stored_from(item))
                    if remaining is not None:
                        remaining -= 1
                        if remaining == 0:
                            return
                token = document.get("continuation")
                if not token:
                    break

    def _thread_ids(self, config: RunnableConfig | None) -> Iterator[str]:
        if config is not None:
            yield str(config["configurable"]["thread_id"])
            return
        token = None
        while True:
            document = self._send(self._threads_call(token))
            yield from (item["thread_id"] for item in document["items"])
            token = document.get("continuation")
            if not token:
                return

    def put(self, config: RunnableConfig, checkpoint: Checkpoint, metadata: CheckpointMetadata,
            new_versions: ChannelVersions) -> RunnableConfig:
        configurable = config["configurable"]
        key = (str(configurable["thread_id"]), str(configurable.get("checkpoint_ns", "")))
        started = self._put_started(key)
        try:
            call, put = self._put_call(config, checkpoint, metadata, new_versions)
            self._put_carrying(call, put)
        finally:
            self._put_done(key, started)
        return put.config()

    def put_writes(self, config: RunnableConfig, writes: Sequence[tuple[str, Any]], task_id: str,
                   task_path: str = "") -> None:
        held = self._held_writes(config, writes, task_id, task_path)
        if self.writes_linger > 0 and held.size <= _CARRY_BYTES and self._may_linger(held.key):
            self._hold(held)
            return
        held.taken = True
        self._send_alone([*self._take(lambda key: key == held.key), held])  # after the thread's held ones
        if held.error is not None:
            raise held.error

    def delete_thread(self, thread_id: str) -> None:
        self._flush(str(thread_id))
        for call in self._delete_thread_calls(thread_id):
            self._send(call)

    def delete_for_runs(self, run_ids: Sequence[str]) -> None:
        self._flush()
        for call in self._delete_runs_calls(run_ids):
            self._send(call)

    def copy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        self._flush(str(source_thread_id))
        for call in self._copy_calls(source_thread_id, target_thread_id):
            self._send(call)

    def prune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        self._flush()
        for call in self._prune_calls(thread_ids, strategy):
            self._send(call)

    def get_next_version(self, current: str | None, channel: None) -> str:
        return _next_version(current)

    # -- async

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        document = await self._asend(self._get_call(config))
        return None if document is None else _tuple(self.serde, _stored_from(document))

    async def alist(self, config: RunnableConfig | None, *, filter: dict[str, Any] | None = None,
                    before: RunnableConfig | None = None, limit: int | None = None) -> AsyncIterator[CheckpointTuple]:
        if limit is not None and limit <= 0:
            return
        before_id = get_checkpoint_id(before) if before else None
        if config is not None and get_checkpoint_id(config):
            found = await self.aget_tuple(config)
            if found is not None and _matches(found.metadata, filter) and (
                    before_id is None or found.config["configurable"]["checkpoint_id"] < before_id):
                yield found
            return
        if config is not None:
            thread_ids = [str(config["configurable"]["thread_id"])]
        else:
            thread_ids, token = [], None
            while True:
                document = await self._asend(self._threads_call(token))
                thread_ids.extend(item["thread_id"] for item in document["items"])
                token = document.get("continuation")
                if not token:
                    break
        remaining = limit
        for thread_id in thread_ids:
            token = None
            while True:
                size = min(remaining, _PAGE) if remaining is not None else _PAGE
                document = await self._asend(self._list_call(thread_id, config, filter, before_id, size, token))
                if document is None:
                    break
                for item in document["items"]:
                    yield _tuple(self.serde, _stored_from(item))
                    if remaining is not None:
                        remaining -= 1
                        if remaining == 0:
                            return
                token = document.get("continuation")
                if not token:
                    break

    async def aput(self, config: RunnableConfig, checkpoint: Checkpoint, metadata: CheckpointMetadata,
                   new_versions: ChannelVersions) -> RunnableConfig:
        call, put = self._put_call(config, checkpoint, metadata, new_versions)
        await self._asend(call)
        return put.config()

    async def aput_writes(self, config: RunnableConfig, writes: Sequence[tuple[str, Any]], task_id: str,
                          task_path: str = "") -> None:
        await self._asend(self._writes_call(self._held_writes(config, writes, task_id, task_path)))

    async def adelete_thread(self, thread_id: str) -> None:
        for call in self._delete_thread_calls(thread_id):
            await self._asend(call)

    async def adelete_for_runs(self, run_ids: Sequence[str]) -> None:
        for call in self._delete_runs_calls(run_ids):
            await self._asend(call)

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        for call in self._copy_calls(source_thread_id, target_thread_id):
            await self._asend(call)

    async def aprune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        for call in self._prune_calls(thread_ids, strategy):
            await self._asend(call)
