"""Regression tests of the LLM client against hostile replies: lone surrogates, trickled and
endless bodies, damaged cache files (a fake server on loopback)."""
import json
import socket
import socketserver
import threading
import time

import pytest

from dllm_masks import cli
from dllm_masks.extract import llm
from dllm_masks.extract.llm import JsonlCache, LLMExtractor

from _extract_helpers import fake_llm  # noqa: F401 (fixture)

ANSWER = "if a:\n    return b\n"


def _client(url, tmp_path, **kw):
    kw.setdefault("timeout", 2.0)
    kw.setdefault("backoff", 0.01)
    kw.setdefault("max_retries", 1)
    return LLMExtractor(url, "m", api_key_env="DLLM_MASKS_TEST_NO_KEY", cache_path=str(tmp_path / "c.jsonl"), **kw)


# --------------------------------------------------------------------------------------------
# Lone surrogates and failed cache writes
# --------------------------------------------------------------------------------------------

def test_a_reply_with_a_lone_surrogate_is_cached_exactly(fake_llm, tmp_path):
    quotes = ["return b", "x\ud800y"]
    fake_llm.replies[ANSWER] = quotes
    ex = _client(fake_llm.base_url, tmp_path)
    sp = ex.extract("p", ANSWER, "code")
    assert not sp.meta["failed"] and sp.meta["exact"] == 1 and sp.meta["unmatched"] == 1
    raw = (tmp_path / "c.jsonl").read_bytes()
    assert raw.endswith(b"\n") and raw.count(b"\n") == 1
    again = _client(fake_llm.base_url, tmp_path)
    assert again.cache.skipped == 0
    sp2 = again.extract("p", ANSWER, "code")
    assert sp2.meta["cached"] and list(sp2) == list(sp) and fake_llm.count() == 1
    assert next(iter(again.cache.entries.values()))["quotes"] == quotes


def test_extract_cli_with_a_lone_surrogate_reply(fake_llm, tmp_path):
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text(json.dumps({"prompt": "p", "answer": ANSWER, "domain": "code"}) + "\n")
    fake_llm.replies[ANSWER] = ["return b", "\ud800"]
    argv = ["extract", str(src), str(out), "--method", "llm", "--base-url", fake_llm.base_url, "--model", "m",
            "--cache", str(tmp_path / "c.jsonl"), "--no-progress"]
    assert cli.main(argv) == 0
    recs = [json.loads(ln) for ln in out.read_text().splitlines()]
    assert len(recs) == 1 and recs[0]["spans"]


def test_a_failed_cache_write_keeps_the_spans_and_caches_nothing(fake_llm, tmp_path, monkeypatch):
    def disk_full(path, line):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(llm, "_append_line", disk_full)
    ex = _client(fake_llm.base_url, tmp_path)
    sp = ex.extract("p", ANSWER, "code")
    assert not sp.meta["failed"] and len(sp) == 2 and "No space left" in sp.meta["cache_error"]
    assert ex.stats["cache_errors"] == 1 and ex.cache.entries == {}
    assert not ex.extract("p", ANSWER, "code").meta["cached"] and fake_llm.count() == 2


# --------------------------------------------------------------------------------------------
# Cache records
# --------------------------------------------------------------------------------------------

def test_malformed_cache_records_are_skipped_and_counted(fake_llm, tmp_path):
    ex = _client(fake_llm.base_url, tmp_path)
    key = ex.cache_key("p", ANSWER, "code")
    bad = [{"key": key}, {"key": key, "quotes": "return b"}, {"key": key, "quotes": None},
           {"key": key, "quotes": [1, 2]}, {"key": 5, "quotes": []}, ["key", key], "x"]
    good = {"key": "other", "quotes": ["q"]}
    (tmp_path / "c.jsonl").write_text("".join(json.dumps(r) + "\n" for r in bad + [good]) + "[[[[\n")
    ex = _client(fake_llm.base_url, tmp_path)
    assert ex.cache.skipped == len(bad) + 1 and set(ex.cache.entries) == {"other"}
    sp = ex.extract("p", ANSWER, "code")  # asks the server instead of crashing
    assert not sp.meta["failed"] and not sp.meta["cached"] and fake_llm.count() == 1


def test_every_append_starts_on_a_fresh_line(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"key": "a", "quotes": ["x"]}) + "\n")
    early = JsonlCache(str(path))  # opened while the file ends cleanly
    with open(path, "a") as f:
        f.write('{"key": "b", "quo')  # another writer, killed mid-line
    early.put("c", {"quotes": ["y"]})
    early.put("d", {"quotes": ["z"]})
    late = JsonlCache(str(path))
    assert set(late.entries) == {"a", "c", "d"} and late.skipped == 1
    assert path.read_text().count("\n") == 4


# --------------------------------------------------------------------------------------------
# Whole-request deadline and response size cap
# --------------------------------------------------------------------------------------------

class _RawServer:
    """A loopback HTTP server whose handler writes raw bytes: ``serve(sock)`` after the request."""

    def __init__(self, serve):
        class Handler(socketserver.BaseRequestHandler):
            def handle(self):
                self.request.settimeout(5)
                data = b""
                try:
                    while b"\r\n\r\n" not in data:
                        data += self.request.recv(65536)
                    head, _, rest = data.partition(b"\r\n\r\n")
                    n = int(next(ln.split(b":")[1] for ln in head.split(b"\r\n")
                                 if ln.lower().startswith(b"content-length")))
                    while len(rest) < n:
                        rest += self.request.recv(65536)
                    serve(self.request)
                except OSError:
                    pass

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def _trickle(sock):
    sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n")
    for _ in range(100):
        sock.sendall(b" ")
        time.sleep(0.4)


def _endless_chunked(sock):
    sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunk = b"%x\r\n%s\r\n" % (65536, b" " * 65536)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        sock.sendall(chunk)


def _huge_length(sock):
    sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 300000000\r\n\r\n{")
    time.sleep(2)


@pytest.fixture
def raw_server():
    servers = []

    def make(serve):
        servers.append(_RawServer(serve))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


def test_a_trickled_reply_is_cut_off_at_the_deadline(raw_server, tmp_path):
    srv = raw_server(_trickle)
    ex = _client(srv.base_url, tmp_path, timeout=1.0, deadline=1.0, max_retries=1)
    t0 = time.monotonic()
    sp = ex.extract("p", ANSWER, "code")
    took = time.monotonic() - t0
    assert sp.meta["failed"] and "deadline of 1s" in sp.meta["error"], sp.meta
    assert ex.stats["requests"] == 2 and ex.stats["failures"] == 1
    assert took < 4.0, took


def test_an_endless_chunked_reply_is_refused_at_the_size_cap(raw_server, tmp_path):
    srv = raw_server(_endless_chunked)
    ex = _client(srv.base_url, tmp_path, deadline=20.0, max_response_bytes=1 << 20)
    t0 = time.monotonic()
    sp = ex.extract("p", ANSWER, "code")
    assert time.monotonic() - t0 < 5.0
    assert sp.meta["failed"] and "max_response_bytes=1048576" in sp.meta["error"], sp.meta
    assert ex.stats["requests"] == 1 and ex.stats["failures"] == 1  # not retried


def test_a_declared_length_over_the_cap_is_refused_before_reading(raw_server, tmp_path):
    srv = raw_server(_huge_length)
    ex = _client(srv.base_url, tmp_path, max_response_bytes=1000)
    t0 = time.monotonic()
    sp = ex.extract("p", ANSWER, "code")
    assert time.monotonic() - t0 < 1.5
    assert sp.meta["failed"] and "Content-Length 300000000" in sp.meta["error"]


@pytest.mark.parametrize("kw, match", [
    ({"deadline": 0}, "deadline: must be > 0"),
    ({"deadline": "1"}, "deadline: expected a number"),
    ({"max_response_bytes": 0}, "max_response_bytes: must be >= 1"),
    ({"max_response_bytes": 1.5}, "max_response_bytes: expected an int"),
])
def test_new_limits_are_checked(kw, match, tmp_path):
    if kw == {"deadline": 0}:
        (tmp_path / "dir.jsonl").mkdir()
        with pytest.raises(ValueError, match="cache_path: .* is a directory"):
            JsonlCache(str(tmp_path / "dir.jsonl"))
    with pytest.raises((TypeError, ValueError), match=match):
        _client("http://127.0.0.1:1/v1", tmp_path, **kw)
