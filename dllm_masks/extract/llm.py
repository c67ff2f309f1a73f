"""The paper's extraction pipeline: an LLM quotes the information-dense spans of each answer.

:class:`LLMExtractor` talks to any OpenAI-compatible ``/chat/completions`` endpoint (vLLM,
SGLang, llama.cpp's server, hosted APIs) with the standard library's ``http.client``:

* a prompt with the domain's rules (§2.1 of the paper: control-flow conditions and algorithm
  pivot points for code; core operations and key intermediate and final results for math) that
  asks for the spans quoted verbatim from the answer, as JSON;
* alignment of each quote back to character offsets (:func:`align_quotes`): exact first (from
  where the previous quote ended, then anywhere), then whitespace-insensitive, then a bounded
  fuzzy match; quotes that match nothing are dropped and counted;
* a thread pool for concurrency, a per-socket-operation timeout, a deadline for each whole
  request and a cap on the size of a reply, retries with exponential
  backoff and jitter on 429, 5xx, timeouts, dropped connections and malformed responses,
  honouring ``Retry-After``;
* a resumable JSONL cache keyed by a hash of (prompt version, model, domain, prompt, answer): a
  rerun sends no request for what it already has, and an interrupted run loses at most the
  requests in flight.

Configuration: ``base_url`` (or ``$DLLM_MASKS_LLM_BASE_URL``), ``model`` (or
``$DLLM_MASKS_LLM_MODEL``) and the API key read from the environment variable named by
``api_key_env`` (default ``OPENAI_API_KEY``; unset means no ``Authorization`` header, which is
what a local vLLM wants). Keys are never written to the cache or to errors.
Proxies are not used (``http.client`` connects directly).
"""
from __future__ import annotations

import difflib
import email.utils
import hashlib
import http.client
import json
import os
import random
import re
import socket
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Callable, Iterable, List, Optional, Sequence, Tuple

from tqdm.auto import tqdm

from .spans import Spans, merge_spans

__all__ = ["LLMExtractor", "LLMError", "align_quotes", "build_messages", "parse_quotes", "PROMPT_VERSION"]

PROMPT_VERSION = "dense-spans-v1"
ENV_BASE_URL = "DLLM_MASKS_LLM_BASE_URL"
ENV_MODEL = "DLLM_MASKS_LLM_MODEL"

DOMAIN_RULES = {
    "code": (
        "The answer is code. Information-dense spans are:\n"
        "- control-flow conditions: the tests of if/elif/else if/while/until, loop conditions and "
        "loop headers' ranges, assertion conditions, conditional-expression tests, filters;\n"
        "- algorithm pivot points: the updates that carry the algorithm (accumulators, pointer and "
        "index moves, state transitions, recurrences), recursive calls, index and slice "
        "arithmetic, and the values returned.\n"
        "Do not quote boilerplate: imports, signatures, docstrings, comments, prints, plain "
        "variable initialisation, brackets and punctuation."
    ),
    "math": (
        "The answer is a math solution. Information-dense spans are:\n"
        "- core mathematical operations: each expression or equation that computes something "
        "(including calculator annotations like <<48/2=24>>);\n"
        "- key intermediate results and the final result (including the answer after #### or "
        "inside \\boxed{}).\n"
        "Do not quote connective prose, restatements of the question or units on their own."
    ),
}

SYSTEM_PROMPT = (
    "You annotate training data for a diffusion language model. Given an instruction (Prompt) and "
    "its target response (Answer), you extract the information-dense spans of the Answer: the "
    "short pieces that carry its logic, where a mistake would make the answer wrong. Quote each "
    "span verbatim from the Answer (copy the exact characters, keep whitespace, never paraphrase, "
    "never quote the Prompt), in order of appearance, each as short as possible while complete. "
    "Typically a quarter to a third of the Answer is dense. Reply with JSON only, in the form "
    '{"spans": ["<verbatim quote>", ...]}.'
)


class LLMError(RuntimeError):
    """A request that failed for good (after retries, or with a non-retryable status)."""


# ---------------------------------------------------------------------------------------------
# Prompt and response
# ---------------------------------------------------------------------------------------------
def build_messages(prompt: str, answer: str, domain: str) -> List[dict]:
    """The chat messages for one sample (system: rules; user: prompt and answer)."""
    if domain not in DOMAIN_RULES:
        raise ValueError(f"domain: expected one of {', '.join(map(repr, DOMAIN_RULES))}, got {domain!r}")
    user = (f"{DOMAIN_RULES[domain]}\n\n### Prompt\n{prompt}\n\n### Answer\n{answer}\n\n"
            'Return {"spans": [...]} with verbatim quotes from the Answer.')
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


_JSON_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.S)


def parse_quotes(content: str) -> List[str]:
    """The quotes in a model reply: ``{"spans": [...]}`` or a bare list, possibly inside a
    Markdown fence or surrounded by text. Items may be strings or objects with a ``text``/
    ``quote``/``span`` field. Raises ``ValueError`` when no such JSON is found."""
    if not isinstance(content, str):
        raise ValueError(f"content: expected a str, got {type(content).__name__}")
    candidates = [content.strip()]
    candidates += [m.group(1).strip() for m in _JSON_FENCE.finditer(content)]
    for o, c in (("{", "}"), ("[", "]")):
        i, j = content.find(o), content.rfind(c)
        if 0 <= i < j:
            candidates.append(content[i:j + 1])
    for cand in candidates:
        try:
            obj = json.loads(cand)
        except (json.JSONDecodeError, RecursionError):
            continue
        if isinstance(obj, dict):
            obj = next((obj[k] for k in ("spans", "quotes", "dense_spans", "spans_text") if k in obj), None)
        if not isinstance(obj, list):
            continue
        out = []
        for it in obj:
            if isinstance(it, dict):
                it = next((it[k] for k in ("text", "quote", "span") if isinstance(it.get(k), str)), None)
            if isinstance(it, str) and it.strip():
                out.append(it)
        return out
    raise ValueError("content: no JSON list of quotes found in the reply")


# ---------------------------------------------------------------------------------------------
# Quote alignment
# ---------------------------------------------------------------------------------------------
def _ws_pattern(q: str) -> Optional[re.Pattern]:
    parts = q.split()
    if not parts or len(parts) > 400:
        return None
    return re.compile(r"\s+".join(re.escape(p) for p in parts))


def _fuzzy(answer: str, q: str, threshold: float, max_cells: int) -> Optional[Tuple[int, int]]:
    """Best window of ``answer`` similar to ``q`` (difflib ratio >= threshold), anchored at the
    longest block they share; None when the work would exceed ``max_cells`` or nothing is close."""
    n, m = len(answer), len(q)
    if m < 8 or n == 0 or n * m > max_cells:
        return None
    sm = difflib.SequenceMatcher(None, answer, q, autojunk=False)
    i, j, k = sm.find_longest_match(0, n, 0, m)
    if k < 4:
        return None
    best, best_r = None, threshold
    base = i - j
    slack = max(2, m // 8)
    for ds in range(-slack, slack + 1, max(1, slack // 4)):
        for de in range(-slack, slack + 1, max(1, slack // 4)):
            s, e = max(0, base + ds), min(n, base + m + de)
            if e - s < 1:
                continue
            r = difflib.SequenceMatcher(None, answer[s:e], q, autojunk=False).ratio()
            if r > best_r or (r == best_r and best is None):
                best, best_r = (s, e), r
    if best is None:
        return None
    s, e = best
    while s < e and answer[s].isspace():
        s += 1
    while e > s and answer[e - 1].isspace():
        e -= 1
    return (s, e) if s < e else None


def align_quotes(answer: str, quotes: Sequence[str], *, fuzzy_threshold: float = 0.85,
                 max_fuzzy_cells: int = 20_000_000) -> Tuple[List[Tuple[int, int]], dict]:
    """Map verbatim quotes back to character spans of ``answer``.

    Each quote is looked for in order: exactly, from where the previous quote ended and then
    anywhere; then with any run of whitespace matching any other; then (quotes of 8+ characters)
    by a bounded fuzzy match — the window around the longest block shared with the answer whose
    difflib similarity is at least ``fuzzy_threshold``, skipped when
    ``len(answer) * len(quote) > max_fuzzy_cells``.

    Parameters
    ----------
    answer : str
    quotes : sequence of str
    fuzzy_threshold : float in (0, 1]
    max_fuzzy_cells : int

    Returns
    -------
    (list of (int, int), dict)
        Merged spans into ``answer``, and counts ``{"quotes", "exact", "whitespace", "fuzzy",
        "unmatched"}``.
    """
    if not isinstance(answer, str):
        raise TypeError(f"answer: expected a str, got {type(answer).__name__}")
    if isinstance(quotes, str):
        raise TypeError("quotes: expected a sequence of str, got a str")
    if not 0 < fuzzy_threshold <= 1:
        raise ValueError(f"fuzzy_threshold: must lie in (0, 1], got {fuzzy_threshold}")
    stats = {"quotes": 0, "exact": 0, "whitespace": 0, "fuzzy": 0, "unmatched": 0}
    spans, cursor = [], 0
    for q in quotes:
        stats["quotes"] += 1
        if not isinstance(q, str) or not q.strip():
            stats["unmatched"] += 1
            continue
        q = q.strip()
        hit, how = None, None
        i = answer.find(q, cursor)
        if i < 0:
            i = answer.find(q)
        if i >= 0:
            hit, how = (i, i + len(q)), "exact"
        else:
            pat = _ws_pattern(q)
            m = pat and (pat.search(answer, cursor) or pat.search(answer))
            if m:
                hit, how = m.span(), "whitespace"
            else:
                hit = _fuzzy(answer, q, fuzzy_threshold, max_fuzzy_cells)
                how = "fuzzy" if hit else "unmatched"
        stats[how] += 1
        if hit:
            spans.append(hit)
            cursor = hit[1]
    return merge_spans(spans, hi=len(answer)), stats


# ---------------------------------------------------------------------------------------------
# Cache
# ---------------------------------------------------------------------------------------------
class JsonlCache:
    """Append-only JSONL cache: one ``{"key": str, "quotes": [str, ...], ...}`` object per line, the
    last line for a key wins. Lines that do not parse or do not have that form (a write cut short
    by a crash, a damaged file) are skipped and counted in ``skipped``. Every record is written
    with one ``write`` of a whole line (ASCII JSON, so a reply holding a lone surrogate is kept
    exactly) to a file opened for appending, starting on a fresh line even when another writer
    left a partial one. Thread-safe."""

    def __init__(self, path: Optional[str]):
        self.path = path
        self.entries: dict = {}
        self.skipped = 0
        self._lock = threading.Lock()
        if path and os.path.isdir(path):
            raise ValueError(f"cache_path: {path} is a directory, expected a JSONL file")
        if path and os.path.exists(path):
            with open(path, "rb") as f:
                data = f.read()
            for line in data.splitlines():
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except (ValueError, RecursionError):
                    rec = None
                if _valid_record(rec):
                    self.entries[rec["key"]] = rec
                else:
                    self.skipped += 1

    def get(self, key: str) -> Optional[dict]:
        with self._lock:
            return self.entries.get(key)

    def put(self, key: str, rec: dict) -> None:
        """Record ``rec`` under ``key``: written to the file first, then kept in memory (a failed
        write raises ``OSError`` and leaves nothing behind)."""
        rec = dict(rec, key=key)
        line = (json.dumps(rec, ensure_ascii=True) + "\n").encode("ascii")
        with self._lock:
            if self.path:
                _append_line(self.path, line)
            self.entries[key] = rec


def _valid_record(rec) -> bool:
    return (isinstance(rec, dict) and isinstance(rec.get("key"), str) and isinstance(rec.get("quotes"), list)
            and all(isinstance(q, str) for q in rec["quotes"]))


def _append_line(path: str, line: bytes) -> None:
    """Append ``line`` (ending in a newline) with one ``write``, after a newline if the file does
    not end in one (a partial line left by a writer that was killed)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size:
            with open(path, "rb") as f:
                f.seek(size - 1)
                if f.read(1) != b"\n":
                    line = b"\n" + line
        view = memoryview(line)
        while view:  # a regular file takes the whole line at once; loop only on a short write
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------
# Client
# ---------------------------------------------------------------------------------------------
class _Retryable(Exception):
    def __init__(self, msg: str, retry_after: Optional[float] = None):
        super().__init__(msg)
        self.retry_after = retry_after


class _Deadline(Exception):
    pass


class _TooLarge(Exception):
    pass


def _retry_after(value: Optional[str], now: Callable[[], float] = time.time) -> Optional[float]:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        dt = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if dt is None:
        return None
    return max(0.0, dt.timestamp() - now())


class LLMExtractor:
    """Extract information-dense spans with an LLM behind an OpenAI-compatible API.

    Parameters
    ----------
    base_url : str, optional
        API root, e.g. ``"http://localhost:8000/v1"`` (``/chat/completions`` is appended unless
        already there). Default: ``$DLLM_MASKS_LLM_BASE_URL``.
    model : str, optional
        Model name sent in each request. Default: ``$DLLM_MASKS_LLM_MODEL``.
    api_key_env : str
        Name of the environment variable holding the API key (read once, here). Unset or empty:
        no ``Authorization`` header.
    cache_path : str, optional
        JSONL cache file (created on first write). None: an in-memory cache only.
    timeout : float
        Seconds for the connection and for each socket read.
    deadline : float
        Seconds for a whole attempt (connect, send, headers and body): a server that trickles its
        reply is cut off when they are over (a retryable failure, like a timeout). Default 300.
    max_response_bytes : int
        Largest response body read, in bytes (default 16 MiB): a larger one, or an endless
        stream, fails at once (not retried) with an :class:`LLMError` naming the limit.
    max_retries : int
        Retries after the first attempt on 429, 5xx, timeouts, connection errors and malformed
        replies. Other 4xx fail at once.
    backoff, max_backoff : float
        Delay before retry r (0-based): ``min(max_backoff, backoff * 2**r)`` scaled by a jitter in
        [0.5, 1]; a ``Retry-After`` header overrides it (capped at ``max_retry_after``).
    max_retry_after : float
        Longest ``Retry-After`` honoured, in seconds.
    concurrency : int
        Threads for :meth:`extract_many`.
    temperature, max_tokens : float, int
        Sampling settings sent with each request.
    json_mode : bool
        Send ``response_format: {"type": "json_object"}`` (vLLM, SGLang, OpenAI support it).
    fuzzy_threshold : float
        Passed to :func:`align_quotes`.
    extra_body : dict, optional
        Extra fields merged into each request body.
    sleep : callable
        ``time.sleep`` (tests may record delays).

    Attributes
    ----------
    stats : dict
        ``requests`` (HTTP attempts made), ``retries``, ``cache_hits``, ``failures``,
        ``cache_errors`` (replies that could not be written to the cache file).
    """

    def __init__(self, base_url: Optional[str] = None, model: Optional[str] = None, *,
                 api_key_env: str = "OPENAI_API_KEY", cache_path: Optional[str] = None,
                 timeout: float = 60.0, deadline: float = 300.0, max_response_bytes: int = 16 << 20,
                 max_retries: int = 5, backoff: float = 1.0,
                 max_backoff: float = 60.0, max_retry_after: float = 600.0, concurrency: int = 8,
                 temperature: float = 0.0, max_tokens: int = 2048, json_mode: bool = False,
                 fuzzy_threshold: float = 0.85, extra_body: Optional[dict] = None,
                 sleep: Callable[[float], None] = time.sleep, seed: int = 0):
        base_url = base_url or os.environ.get(ENV_BASE_URL)
        model = model or os.environ.get(ENV_MODEL)
        if not base_url or not isinstance(base_url, str):
            raise ValueError(f"base_url: give the API root (e.g. http://localhost:8000/v1) or set ${ENV_BASE_URL}")
        if not model or not isinstance(model, str):
            raise ValueError(f"model: give the model name or set ${ENV_MODEL}")
        url = urllib.parse.urlsplit(base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"base_url: expected an http(s) URL, got {base_url!r}")
        if not isinstance(api_key_env, str) or not api_key_env:
            raise TypeError("api_key_env: expected the name of an environment variable")
        for name, v in (("timeout", timeout), ("deadline", deadline), ("backoff", backoff), ("max_backoff", max_backoff),
                        ("max_retry_after", max_retry_after)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0:
                raise ValueError(f"{name}: expected a number >= 0, got {v!r}")
        for name, v in (("timeout", timeout), ("deadline", deadline)):
            if v <= 0:
                raise ValueError(f"{name}: must be > 0, got {v}")
        for name, v, lo in (("max_response_bytes", max_response_bytes, 1), ("max_retries", max_retries, 0), ("concurrency", concurrency, 1),
                            ("max_tokens", max_tokens, 1)):
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"{name}: expected an int, got {type(v).__name__}")
            if v < lo:
                raise ValueError(f"{name}: must be >= {lo}, got {v}")
        path = url.path.rstrip("/")
        if not path.endswith("/chat/completions"):
            path += "/chat/completions"
        self._scheme, self._host, self._port = url.scheme, url.hostname, url.port
        self._path = path + (f"?{url.query}" if url.query else "")
        self.base_url, self.model = base_url, model
        self._api_key = os.environ.get(api_key_env) or None
        self.timeout, self.max_retries = float(timeout), max_retries
        self.deadline, self.max_response_bytes = float(deadline), max_response_bytes
        self.backoff, self.max_backoff, self.max_retry_after = float(backoff), float(max_backoff), float(max_retry_after)
        self.concurrency, self.temperature, self.max_tokens = concurrency, temperature, max_tokens
        self.json_mode, self.fuzzy_threshold = json_mode, fuzzy_threshold
        self.extra_body = dict(extra_body or {})
        self.sleep = sleep
        self.cache = JsonlCache(cache_path)
        self.stats = {"requests": 0, "retries": 0, "cache_hits": 0, "failures": 0, "cache_errors": 0}
        self._lock = threading.Lock()
        self._rng = random.Random(seed)

    # ------------------------------------------------------------------------------------------
    def cache_key(self, prompt: str, answer: str, domain: str) -> str:
        """SHA-256 of (prompt version, model, domain, prompt, answer)."""
        blob = json.dumps([PROMPT_VERSION, self.model, domain, prompt, answer], ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8", "surrogatepass")).hexdigest()

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.stats[key] += n

    def _post(self, body: bytes) -> Tuple[int, dict, bytes]:
        cls = http.client.HTTPSConnection if self._scheme == "https" else http.client.HTTPConnection
        conn = cls(self._host, self._port, timeout=self.timeout)
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        expired = threading.Event()

        def cut_off():  # the deadline: unblock whatever read or write is in progress
            expired.set()
            sock = conn.sock
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

        timer = threading.Timer(self.deadline, cut_off)
        timer.daemon = True
        timer.start()
        try:
            try:
                conn.connect()
                if expired.is_set():
                    raise _Deadline()
                conn.request("POST", self._path, body=body, headers=headers)
                resp = conn.getresponse()
                data = self._read_body(resp)
            except (_Deadline, _TooLarge):
                raise
            except Exception:
                if expired.is_set():
                    raise _Deadline() from None
                raise
            if expired.is_set():  # the body may have been cut short
                raise _Deadline()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
        finally:
            timer.cancel()
            conn.close()

    def _read_body(self, resp) -> bytes:
        """The response body, at most ``max_response_bytes`` of it (else :class:`_TooLarge`)."""
        cap = self.max_response_bytes
        length = resp.getheader("content-length")
        if length is not None and length.strip().isdigit() and int(length) > cap:
            raise _TooLarge(f"Content-Length {int(length)}")
        chunks, size = [], 0
        while True:
            chunk = resp.read1(1 << 16)
            if not chunk:
                return b"".join(chunks)
            size += len(chunk)
            if size > cap:
                raise _TooLarge(f"more than {size} bytes read")
            chunks.append(chunk)

    def _attempt(self, body: bytes) -> List[str]:
        self._count("requests")
        try:
            status, headers, data = self._post(body)
        except _Deadline:
            raise _Retryable(f"deadline of {self.deadline:g}s for the whole request exceeded") from None
        except _TooLarge as e:
            raise LLMError(f"response larger than max_response_bytes={self.max_response_bytes} ({e})") from None
        except (socket.timeout, TimeoutError) as e:
            raise _Retryable(f"timeout after {self.timeout}s ({e})") from None
        except (ConnectionError, http.client.HTTPException, OSError) as e:
            raise _Retryable(f"connection failed: {type(e).__name__}: {e}") from None
        if status == 429 or 500 <= status < 600:
            raise _Retryable(f"HTTP {status}: {data[:200].decode('utf-8', 'replace')}",
                             _retry_after(headers.get("retry-after")))
        if status != 200:
            raise LLMError(f"HTTP {status}: {data[:300].decode('utf-8', 'replace')}")
        try:
            reply = json.loads(data)
            content = reply["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise _Retryable(f"malformed response body ({type(e).__name__}): {data[:200].decode('utf-8', 'replace')}") from None
        try:
            return parse_quotes(content)
        except ValueError as e:
            raise _Retryable(f"malformed reply content: {e}: {str(content)[:200]}") from None

    def _delay(self, attempt: int, retry_after: Optional[float]) -> float:
        if retry_after is not None:
            return min(retry_after, self.max_retry_after)
        with self._lock:
            jitter = 0.5 + 0.5 * self._rng.random()
        return min(self.max_backoff, self.backoff * 2 ** attempt) * jitter

    def request_quotes(self, prompt: str, answer: str, domain: str) -> List[str]:
        """Ask the model for the quotes of one sample (no cache). Raises :class:`LLMError`."""
        payload = {"model": self.model, "messages": build_messages(prompt, answer, domain),
                   "temperature": self.temperature, "max_tokens": self.max_tokens}
        if self.json_mode:
            payload["response_format"] = {"type": "json_object"}
        payload.update(self.extra_body)
        body = json.dumps(payload, ensure_ascii=False).encode("utf-8", "surrogatepass")
        last = None
        for attempt in range(self.max_retries + 1):
            try:
                return self._attempt(body)
            except _Retryable as e:
                last = e
                if attempt == self.max_retries:
                    break
                self._count("retries")
                self.sleep(self._delay(attempt, e.retry_after))
        raise LLMError(f"gave up after {self.max_retries + 1} attempts: {last}")

    # ------------------------------------------------------------------------------------------
    def extract(self, prompt: str, answer: str, domain: str) -> Spans:
        """Dense spans of one sample's answer.

        Parameters
        ----------
        prompt, answer : str
            The SFT instruction and its target; spans index ``answer``.
        domain : {"code", "math"}

        Returns
        -------
        Spans
            Merged character spans into ``answer``. ``meta``: ``method="llm"``, ``model``,
            ``prompt_version``, ``cached`` (bool), ``error`` (str or None; on failure the spans
            are empty and ``failed`` is True), and the alignment counts of :func:`align_quotes`.
            HTTP failures do not raise: they are reported in ``meta`` and not cached, so a rerun
            retries them.
        """
        for name, v in (("prompt", prompt), ("answer", answer)):
            if not isinstance(v, str):
                raise TypeError(f"{name}: expected a str, got {type(v).__name__}")
        if domain not in DOMAIN_RULES:
            raise ValueError(f"domain: expected one of {', '.join(map(repr, DOMAIN_RULES))}, got {domain!r}")
        key = self.cache_key(prompt, answer, domain)
        meta = {"method": "llm", "model": self.model, "prompt_version": PROMPT_VERSION,
                "rules": [domain], "error": None, "failed": False, "cached": False}
        rec = self.cache.get(key)
        if rec is not None:
            self._count("cache_hits")
            quotes = rec["quotes"]
            meta["cached"] = True
        else:
            try:
                quotes = self.request_quotes(prompt, answer, domain)
            except LLMError as e:
                self._count("failures")
                meta.update(error=str(e), failed=True)
                return Spans([], meta)
            try:
                self.cache.put(key, {"quotes": quotes, "model": self.model, "prompt_version": PROMPT_VERSION,
                                     "domain": domain})
            except OSError as e:  # the spans are still good; the next run asks again
                self._count("cache_errors")
                meta["cache_error"] = f"{type(e).__name__}: {e}"
        spans, counts = align_quotes(answer, quotes, fuzzy_threshold=self.fuzzy_threshold)
        meta.update(counts)
        return Spans(spans, meta)

    def extract_many(self, samples: Iterable, *, progress: bool = True) -> List[Spans]:
        """:meth:`extract` over many samples with ``concurrency`` threads, results in input order.

        Parameters
        ----------
        samples : iterable of dict (``prompt``, ``answer``, ``domain``) or (prompt, answer, domain)
        progress : bool
            Show a tqdm progress bar.
        """
        items = []
        for i, s in enumerate(samples):
            if isinstance(s, dict):
                try:
                    items.append((s["prompt"], s["answer"], s["domain"]))
                except KeyError as e:
                    raise ValueError(f"samples: item {i} lacks {e}") from None
            else:
                try:
                    p, a, d = s
                except (TypeError, ValueError):
                    raise TypeError(f"samples: item {i} is not a dict or a (prompt, answer, domain) triple") from None
                items.append((p, a, d))
        out: List[Optional[Spans]] = [None] * len(items)

        pool = ThreadPoolExecutor(max_workers=self.concurrency)
        try:
            with tqdm(total=len(items), desc="llm extract", disable=not progress, leave=False) as bar:
                futs = {pool.submit(self.extract, *it): i for i, it in enumerate(items)}
                for fut in as_completed(futs):
                    out[futs[fut]] = fut.result()
                    bar.update(1)
        except BaseException:  # Ctrl-C or an error: drop the queued requests, keep the cache
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown()
        return out  # type: ignore[return-value]

