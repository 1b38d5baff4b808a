"""End to end over real HTTP: the edges of objects (issue 8), on every backend.

Conditional requests with ``*`` follow RFC 9110, every key of up to 256
characters works, and a continuation token that this service did not issue for
this listing is a 400, never a 503 or an ERROR in the server's log.
"""

from __future__ import annotations

import urllib.parse
import uuid

from tests.e2e import problem


def test_if_match_star_and_if_none_match_star_follow_rfc_9110(server):
    key = f"conditions/{uuid.uuid4().hex[:8]}"
    url = f"/api/v1/objects/{key}"
    with server.client() as http:
        problem(http.put(url, content=b"1", headers={"If-Match": "*"}), 412)  # nothing to match
        problem(http.delete(url, headers={"If-Match": "*"}), 412)
        assert http.put(url, content=b"1", headers={"If-None-Match": "*"}).status_code == 201
        problem(http.put(url, content=b"2", headers={"If-None-Match": "*"}), 412)
        updated = http.put(url, content=b"2", headers={"If-Match": "*"})
        assert updated.status_code == 200 and http.get(url).content == b"2"
        assert http.get(url, headers={"If-None-Match": "*"}).status_code == 304
        assert http.delete(url, headers={"If-Match": "*"}).status_code == 204
        problem(http.get(url), 404)


def test_a_key_of_256_emoji_percent_signs_and_slashes_works(server):
    key = "/".join(["%\U0001f680"] * 85) + "/x"  # 85 segments of "%🚀", then "x"
    assert len(key) == 256
    url = "/api/v1/objects/" + urllib.parse.quote(key, safe="/")
    with server.client() as http:
        assert http.put(url, content=b"long").status_code == 201
        assert http.get(url).content == b"long"
        listed = http.get("/api/v1/objects", params={"prefix": key[:200]}).json()["items"]
        assert [item["key"] for item in listed] == [key]
        assert http.delete(url).status_code == 204


def test_forged_continuation_tokens_get_400_and_log_no_error(server):
    prefix = f"paged/{uuid.uuid4().hex[:8]}/"
    with server.client() as alpha, server.client("beta") as beta:
        for i in range(3):
            alpha.put(f"/api/v1/objects/{prefix}{i}", content=b"x")
            beta.put(f"/api/v1/objects/{prefix}{i}", content=b"x")
        first = alpha.get("/api/v1/objects", params={"prefix": prefix, "limit": 1}).json()
        token = first["continuation"]
        assert token
        following = alpha.get("/api/v1/objects", params={"prefix": prefix, "limit": 1, "continuation": token})
        assert [item["key"] for item in following.json()["items"]] == [prefix + "1"]
        inner, _, tag = token.rpartition(".")
        forged = [inner[:-1] + ("A" if inner[-1] != "A" else "B") + "." + tag, token[:-4], inner, "garbage!",
                  "eyJhZnRlciI6eyJ4IjoxfX0." + tag]
        for bad in forged:
            body = problem(alpha.get("/api/v1/objects", params={"prefix": prefix, "limit": 1, "continuation": bad}),
                           400)
            assert "continuation token" in body["detail"]
        # Another tenant's listing, or another prefix, does not take the token either.
        problem(beta.get("/api/v1/objects", params={"prefix": prefix, "limit": 1, "continuation": token}), 400)
        problem(alpha.get("/api/v1/objects", params={"prefix": prefix + "1", "continuation": token}), 400)
    log = server.log()
    assert "damaged" not in log
    assert not [line for line in log.splitlines() if "ERROR" in line and "continuation" in line]


def test_an_idempotency_key_replays_the_first_answer_and_refuses_another_request(server):
    key = f"idempotent/{uuid.uuid4().hex[:8]}"
    url = f"/api/v1/objects/{key}"
    once = {"Idempotency-Key": f"once-{uuid.uuid4().hex[:8]}", "Content-Type": "text/plain"}
    with server.client() as http:
        first = http.put(url, content=b"1", headers=once)
        assert first.status_code == 201
        again = http.put(url, content=b"1", headers=once)
        assert again.status_code == 201 and again.json() == first.json()  # the first answer, status included
        assert again.headers["ETag"] == first.headers["ETag"]
        body = problem(http.put(url, content=b"2", headers=once), 422)  # the key with another body
        assert "idempotency key" in body["detail"]
        problem(http.put(url + "x", content=b"1", headers=once), 422)  # the key with another object
        assert http.delete(url).status_code == 204
        replay = http.put(url, content=b"1", headers=once)  # after the delete: the first answer, not a 500
        assert replay.status_code == 201 and replay.json() == first.json()
        problem(http.get(url), 404)
