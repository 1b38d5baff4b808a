"""Concurrency races over real HTTP, on every backend: several clients at once against
`stowage serve`, which handles each request on its own worker thread."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

WRITERS = 6
APPENDS_EACH = 5


def test_concurrent_appends_keep_seq_gapless_and_counts_exact(server):
    with server.client() as http:
        thread = http.post("/api/v1/threads", json={"resource": f"race-{uuid.uuid4().hex[:8]}"}).json()
    tid = thread["thread_id"]

    def append(writer: int) -> list[int]:
        seqs = []
        with server.client() as http:
            for n in range(APPENDS_EACH):
                response = http.post(f"/api/v1/threads/{tid}/messages",
                                     json={"role": "user", "content": f"writer {writer} message {n}"})
                assert response.status_code == 201, response.text
                seqs += [m["seq"] for m in response.json()["messages"]]
        return seqs

    with ThreadPoolExecutor(WRITERS) as pool:
        seqs = [seq for result in pool.map(append, range(WRITERS)) for seq in result]
    total = WRITERS * APPENDS_EACH
    assert sorted(seqs) == list(range(1, total + 1)), "every append got its own seq, with no gap"
    with server.client() as http:
        assert http.get(f"/api/v1/threads/{tid}").json()["message_count"] == total
        history = http.get(f"/api/v1/threads/{tid}/messages", params={"last": total}).json()["items"]
        assert sorted(m["seq"] for m in history) == list(range(1, total + 1))
        assert {m["content"] for m in history} == {f"writer {w} message {n}"
                                                   for w in range(WRITERS) for n in range(APPENDS_EACH)}


def test_concurrent_metric_updates_add_up_exactly(server):
    with server.client() as http:
        session = http.post("/api/v1/sessions", json={"user_id": f"race-{uuid.uuid4().hex[:8]}"}).json()
    sid = session["session_id"]

    def record(writer: int) -> None:
        with server.client() as http:
            for _ in range(APPENDS_EACH):
                response = http.post(f"/api/v1/sessions/{sid}/metrics",
                                     json={"requests": 1, "processing_time": 0.125, "errors": writer % 2})
                assert response.status_code == 200, response.text

    with ThreadPoolExecutor(WRITERS) as pool:
        list(pool.map(record, range(WRITERS)))
    with server.client() as http:
        got = http.get(f"/api/v1/sessions/{sid}").json()
    assert got["request_count"] == WRITERS * APPENDS_EACH
    assert got["error_count"] == (WRITERS // 2) * APPENDS_EACH
    assert got["total_processing_time"] == WRITERS * APPENDS_EACH * 0.125
