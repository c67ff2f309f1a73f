"""Run an untrusted generated Python program against its tests in a separate, limited process.

The training process never executes generated code. :func:`run_program` starts
``sys.executable -I -S`` (isolated mode: no ``PYTHON*`` variables, no user site, no script
directory on ``sys.path``; no ``site`` either, for a start-up without ``.pth`` hooks: the
evaluator's site-packages directories are put on ``sys.path`` plainly, so NumPy and friends
import, and ``exit()``/``quit()`` do not exist) in a throw-away working directory and waits for it
with a wall-clock limit. That process (the *supervisor*) forks the *worker*, which lowers its
resource limits, then compiles and runs the program and the test, and reports the outcome; the
supervisor reaps the worker and reports how it ended (exit code or signal, CPU time).

Two isolation levels (``isolation=``):

``"namespace"`` (chosen by ``"auto"`` when the evaluator runs as root on Linux and util-linux's
``unshare`` and ``setpriv`` work: a probe run checks this once per process)
    The supervisor runs in fresh PID, network and IPC namespaces as an unprivileged user id of its
    own (one per concurrent slot, no ``/etc/passwd`` entry needed), with no supplementary groups,
    ``no_new_privs`` and an empty capability bounding set. The program cannot signal any process
    outside its namespace (the evaluator and its other children included: their pids do not exist
    there; the supervisor is the namespace's init, which ignores the program's signals), has no
    network (only a loopback device that is down), cannot write outside its working directory and
    the world-writable directories, and cannot raise its limits again. ``RLIMIT_NPROC`` is
    enforced (it counts per user id, and the id is the slot's own). When the supervisor exits or
    is killed the kernel kills every process left in the namespace, and the run returns only once
    they are gone. Where the interpreter is only reachable by root (a pyenv under ``/root``, as on
    this project's machines; the probe checks that the sandbox runs this very interpreter) the
    unprivileged user keeps one capability, ``CAP_DAC_READ_SEARCH``: it can then *read* any file,
    but still writes and signals as an unprivileged user (:func:`isolation_details` says which).
``"process"`` (everywhere else)
    The program runs as the evaluator's own user, in its own session and process group, with the
    same resource limits. It *can* signal the evaluator and write wherever the evaluator can; a
    process that leaves the process group (``setsid``) can outlive the run; as root it can raise
    its limits again and ``RLIMIT_NPROC`` does not apply at all (the kernel exempts uid 0); as any
    other user ``RLIMIT_NPROC`` counts all of that user's processes and threads, so the limit is
    set to the current count plus ``max_processes`` (approximate).

In both levels: ``RLIMIT_CPU`` per process (SIGXCPU, then SIGKILL a second later),
``RLIMIT_AS`` per process (address space: allocations fail with ``MemoryError``), a watchdog in the
evaluator that sums the proportional set size of the sandbox's whole process tree every 40 ms and
kills the tree once it exceeds ``memory_mb`` (scored ``"memory"``), ``RLIMIT_FSIZE`` (per file,
stdout and stderr included), ``RLIMIT_NOFILE``, no core dumps, stdin from ``/dev/null``, an
environment of ``PATH``, ``HOME`` and ``TMPDIR`` (both the working directory), a UTF-8 locale and
one-thread BLAS settings only, no file descriptors inherited beyond the standard three and the two
private channels (the program's source comes through one, emptied once read; the outcome goes
back through the other), stdout and stderr captured in unlinked temporary files and truncated, and parent-death
signals so that a killed evaluator takes its sandboxes with it. On expiry of the wall clock the
whole process group is killed with SIGKILL; after a normal exit it is killed as well, so that
background children do not survive the run. The working directory is deleted afterwards.

The verdict: the outcome channel is a Unix ``SOCK_SEQPACKET`` socket (its peer cannot be reopened
through ``/proc``, nor read from the sandbox's end), and the evaluator accepts only the first
outcome and exit records whose HMAC-SHA256 under a per-run random key is right. The key reaches the
sandbox in the payload file, which the supervisor empties before the program starts; it lives in
the worker's memory (in a closure bound before the program runs) and in the supervisor's, which is
not dumpable (other processes of its uid cannot read its memory or descriptors). Writing to every
descriptor, reopening them, or replacing module attributes and builtins therefore cannot produce
an accepted record. The test runs with a snapshot of the builtins taken before the program ran,
and each value the entry point returns is refused (scored ``"failed"``) if it holds, directly or in
built-in containers, an instance of a class whose ``__eq__`` or ``__ne__`` is written in Python
(other than ``collections.Counter`` and ``OrderedDict``).

Not enforced: total disk use (a program may write many files of up to ``file_mb`` each until it is
stopped; files written outside the working directory, e.g. in ``/tmp`` or ``/dev/shm``, are not
removed), reads of files the sandbox user may read, and a program that inspects its own interpreter
(frames, ``gc``, ``ctypes``, ``/proc/self/mem``) to find the key or the test's objects, or that
changes attributes of modules the test imports (e.g. ``math.isclose``), or that returns values
whose other special methods (``__str__``, ``__lt__``, ``__len__``...) lie: the sandbox protects the
evaluator and the machine, and makes a forged pass need such deliberate work; it does not make the
score safe against an adversary who does it (docs/evaluation-safety.md lists what is tested).
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import sys

try:
    import resource
except ImportError:  # pragma: no cover - not POSIX
    resource = None

# --------------------------------------------------------------------------------------------
# Sandbox side: this file runs as ``python -I -S sandbox.py PAYLOAD_FD STATUS_FD``
# --------------------------------------------------------------------------------------------

def _set_pdeathsig():
    """Die with SIGKILL when the parent dies (Linux; best effort)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            import ctypes
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG


def _user_tasks(uid: int) -> int:
    """Processes plus threads whose real uid is ``uid`` (what RLIMIT_NPROC counts)."""
    n = 0
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/status") as f:
                    text = f.read()
            except OSError:
                continue
            fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
            if int(fields.get("Uid", "-1").split()[0]) == uid:
                n += int(fields.get("Threads", "1"))
    return n


def _apply_limits(cfg: dict) -> None:
    def setlim(which, soft, hard=None):
        hard = soft if hard is None else hard
        _, cur_hard = resource.getrlimit(which)
        if cur_hard != resource.RLIM_INFINITY:
            soft, hard = min(soft, cur_hard), min(hard, cur_hard)
        resource.setrlimit(which, (soft, hard))

    setlim(resource.RLIMIT_CORE, 0)
    setlim(resource.RLIMIT_CPU, cfg["cpu"], cfg["cpu"] + 1)  # SIGXCPU, then SIGKILL
    setlim(resource.RLIMIT_AS, cfg["memory"])
    setlim(resource.RLIMIT_FSIZE, cfg["fsize"])
    setlim(resource.RLIMIT_NOFILE, cfg["nofile"])
    if cfg["mode"] == "namespace":
        setlim(resource.RLIMIT_NPROC, cfg["nproc"] + 1)  # + the supervisor, same uid
    elif os.getuid() != 0 and sys.platform.startswith("linux"):
        setlim(resource.RLIMIT_NPROC, _user_tasks(os.getuid()) + cfg["nproc"] - 1)


def _sealer(key: bytes):
    """``seal(fields) -> bytes``: one line ``MAC FIELD...`` (fields hex-encoded UTF-8) whose MAC
    is HMAC-SHA256 under ``key``. Everything it calls is bound here, before the program runs, so
    that replacing module attributes or builtins later cannot change what it writes."""
    try:  # the builtin SHA-256 module: hashlib would load OpenSSL, tens of milliseconds per run
        from _sha2 import sha256 as sha  # Python >= 3.12
    except ImportError:
        try:
            from _sha256 import sha256 as sha
        except ImportError:
            from hashlib import sha256 as sha
    enc, hexify, join = str.encode, bytes.hex, b" ".join
    k = key.ljust(64, b"\0")
    xor_in, xor_out = bytes(b ^ 0x36 for b in k), bytes(b ^ 0x5C for b in k)

    def seal(fields) -> bytes:
        body = join([enc(hexify(enc(f, "utf-8", "backslashreplace")), "ascii") for f in fields])
        mac = sha(xor_out + sha(xor_in + body).digest()).digest()
        return enc(hexify(mac), "ascii") + b" " + body + b"\n"

    return seal


def _set_dumpable(flag: int) -> None:
    """prctl(PR_SET_DUMPABLE): a non-dumpable process's memory and descriptors cannot be read
    through /proc by other processes of its user (Linux; best effort)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            import ctypes
            ctypes.CDLL(None, use_errno=True).prctl(4, flag, 0, 0, 0)  # PR_SET_DUMPABLE


def _plain_result_check(trusted):
    """``find(value) -> str | None``: says why ``value`` may not be judged by the test, i.e. it holds
    (in itself or in a built-in container, up to 100,000 objects deep) an instance of a class whose
    equality (``__eq__`` or ``__ne__``) is written in Python and is not one of ``trusted``."""
    mro_of = type.__dict__["__mro__"].__get__
    dict_of = type.__dict__["__dict__"].__get__
    flags_of = type.__dict__["__flags__"].__get__  # not c.__flags__: a metaclass could shadow it
    heap_flag = 1 << 9  # Py_TPFLAGS_HEAPTYPE: a class created by a class statement or type()
    containers = (list, tuple, set, frozenset)
    subclass, typeof, it, any_ = issubclass, type, iter, any
    dkeys, dvalues = dict.keys, dict.values

    def own_comparison(t):
        for name in ("__eq__", "__ne__"):
            for c in mro_of(t):  # the real method resolution order, as the interpreter walks it
                if name in dict_of(c):
                    if flags_of(c) & heap_flag and not any_(c is x for x in trusted):
                        return f"{type.__dict__['__qualname__'].__get__(c)}.{name}"
                    break
        return None

    def find(value):
        stack, seen = [value], 0
        while stack and seen < 100_000:
            v = stack.pop()
            seen += 1
            t = typeof(v)
            if flags_of(t) & heap_flag:
                bad = own_comparison(t)
                if bad is not None:
                    return f"the result compares with a method of its own ({bad}); results must be plain values"
            if subclass(t, dict):
                stack.extend(it(dkeys(v)))
                stack.extend(it(dvalues(v)))
            else:
                for base in containers:
                    if subclass(t, base):
                        stack.extend(base.__iter__(v))
                        break
        return None

    return find


# Long on purpose: everything the worker calls after the untrusted program has run is bound in
# this one frame before it runs (closures over local names), so the program cannot replace it
# through module globals; splitting it into module-level helpers would reopen that door.
def _worker(cfg: dict, status_fd: int) -> None:
    # Bind what the report needs before the program can replace it (module attributes, builtins).
    seal = _sealer(bytes.fromhex(cfg.pop("key")))
    write, exit_, fmt, getpid = os.write, os._exit, _format_exception, os.getpid
    exec_, callable_, compile_, dict_ = exec, callable, compile, dict
    me = getpid()
    _set_dumpable(1)  # the supervisor is not; its worker is, as a plain process would be

    def report(status, detail=""):
        try:
            if getpid() == me:  # not a forked copy that returned into this function
                write(status_fd, seal(("outcome", status, detail[:2000])))
        except BaseException:
            pass
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except BaseException:
                pass
        exit_(0)

    program, test, entry = cfg["program"], cfg["test"], cfg["entry_point"]

    def print_failure(e):  # the traceback without this frame, with the source lines
        with contextlib.suppress(BaseException):
            import linecache
            import traceback
            for name, src in (("<program>", program), ("<test>", test)):
                linecache.cache[name] = (len(src), None, src.splitlines(True), name)
            traceback.print_exception(type(e), e, e.__traceback__.tb_next)

    if cfg["mode"] == "process":
        _set_pdeathsig()
    try:
        _apply_limits(cfg)
    except (OSError, ValueError) as e:
        report("error", f"could not set the resource limits: {e}")
    # Started with -S (no site: faster, no .pth hooks); the evaluator's site-packages, plainly.
    sys.path.extend(p for p in cfg["site_packages"] if p not in sys.path)

    try:
        code = compile_(program, "<program>", "exec")
    except MemoryError as e:
        report("memory", "compile: " + fmt(e))
    except Exception as e:  # SyntaxError, ValueError (NUL bytes), RecursionError (nesting)
        print_failure(e)
        report("syntax", fmt(e))
    try:
        test_code = compile_(test, "<test>", "exec")
    except BaseException as e:
        report("error", "the test does not compile: " + fmt(e))

    import builtins
    import collections
    # The test runs with the builtins as they are now: a program that replaces builtins.abs (say)
    # does not change what the test computes.
    pristine = dict_(builtins.__dict__)
    find_own_comparison = _plain_result_check((collections.Counter, collections.OrderedDict))
    refused = []

    sys.argv = ["__program__"]
    module = type(sys)("__program__")
    sys.modules["__program__"] = module
    g = module.__dict__
    phase = "program"
    try:
        exec_(code, g)
        phase = "test"
        tg = dict_(g)  # the program's names (tests may use its helpers), the pristine builtins
        tg["__builtins__"] = pristine
        exec_(test_code, tg)
        check = tg.get("check")
        if not callable_(check):
            report("error", "the test defines no check(candidate)")
        if entry not in g:
            report("failed", f"the program does not define the entry point {entry!r}")
        phase = "check"
        fn = g[entry]

        def candidate(*args, **kwargs):
            result = fn(*args, **kwargs)
            why = find_own_comparison(result)
            if why is not None:
                refused.append(why)
                raise TypeError(why)
            return result

        with contextlib.suppress(Exception):
            candidate.__name__ = candidate.__qualname__ = entry
            candidate.__doc__, candidate.__wrapped__ = fn.__doc__, fn
        check(candidate)
    except MemoryError as e:
        report("memory", f"{phase}: " + fmt(e))
    except BaseException as e:  # SystemExit and KeyboardInterrupt included: not a pass
        if refused:
            report("failed", f"check: {refused[0]}")
        print_failure(e)
        report("failed", f"{phase}: " + fmt(e))
    if refused:  # the test caught the refusal
        report("failed", f"check: {refused[0]}")
    report("passed")


def _format_exception(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
    return text.replace("\n", " ")[:500]


def _child_main(argv) -> None:
    payload_fd, status_fd = int(argv[1]), int(argv[2])
    with os.fdopen(payload_fd, "rb") as f:
        cfg = json.loads(f.read().decode("utf-8"))
        os.ftruncate(f.fileno(), 0)  # the key in it: gone from every copy of the descriptor
    seal = _sealer(bytes.fromhex(cfg["key"]))
    os.set_inheritable(status_fd, False)  # the program's own children do not get it
    if cfg["mode"] == "process":
        _set_pdeathsig()
    _set_dumpable(0)  # the program (same uid in namespace mode) cannot read the key from /proc
    pid = os.fork()
    if pid == 0:
        try:
            _worker(cfg, status_fd)
        finally:
            os._exit(70)
    del cfg
    # Supervisor: reap the worker (and, as the namespace's init, any orphan) and report.
    while True:
        try:
            got, status, usage = os.wait4(-1, 0)
        except ChildProcessError:
            status, usage = None, None
            break
        if got == pid:
            break
    rc = None if status is None else os.waitstatus_to_exitcode(status)
    cpu = None if usage is None else usage.ru_utime + usage.ru_stime
    os.write(status_fd, seal(("exit", repr(rc), repr(cpu))))
    os._exit(0)


# This file is also the sandbox's script. Run as one it stops here: the evaluator side below, with
# its heavier imports, is not needed there (each import is start-up time of every sandbox).
if __name__ == "__main__":
    _child_main(sys.argv)


import ast  # noqa: E402
import hashlib  # noqa: E402
import hmac  # noqa: E402
import math  # noqa: E402
import numbers  # noqa: E402
import secrets  # noqa: E402
import select  # noqa: E402
import socket  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Optional  # noqa: E402

__all__ = ["STATUSES", "ISOLATIONS", "ExecResult", "SandboxLimits", "run_program", "resolve_isolation",
           "isolation_details", "SANDBOX_UID_BASE", "SANDBOX_UID_SPAN"]

STATUSES = ("passed", "failed", "timeout", "memory", "error", "syntax")
ISOLATIONS = ("auto", "namespace", "process")

# Namespace mode runs each concurrent slot as its own unprivileged uid. The uids need no
# /etc/passwd entry; the range is far above regular and system users and sub-uid ranges.
SANDBOX_UID_BASE = 1_000_000_000
_MAX_SLOTS = 64
SANDBOX_UID_SPAN = (1 << 20) * _MAX_SLOTS
_MAX_OPEN_FILES = 512
_MEMORY_WORDS = ("MemoryError", "Cannot allocate memory", "bad_alloc", "out of memory")


# --------------------------------------------------------------------------------------------
# Results and limits
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ExecResult:
    """The outcome of running one program against its tests.

    Attributes
    ----------
    status : str
        ``"passed"`` (every test passed), ``"failed"`` (a test failed, the program raised, was
        killed by a signal or exited before the tests finished, the entry point is missing, or it
        returned a value that compares with a method of its own),
        ``"timeout"`` (wall-clock or CPU-time limit), ``"memory"`` (memory limit: an allocation
        failed, or the processes together held more than ``memory_mb``), ``"syntax"`` (the program does not compile) or ``"error"`` (the evaluator could
        not judge the program: the test code does not compile or defines no ``check``, the
        sandbox failed to start, or the evaluation was interrupted).
    passed : bool
        ``status == "passed"``.
    duration : float
        Wall-clock seconds from start to the end of the sandbox, interpreter start included.
    stdout : str
        The program's standard output, its first ``output_chars`` characters.
    stderr : str
        The program's standard error (with the traceback of a failure), its last
        ``output_chars`` characters.
    detail : str
        One line saying why, e.g. ``"check: AssertionError"``; empty when passed.
    returncode : int or None
        The worker's exit code (negative: the signal that killed it); None when unknown (the
        whole sandbox was killed on timeout, or did not start).
    cpu_time : float or None
        User plus system CPU seconds of the worker (and the children it waited for).
    isolation : str
        ``"namespace"`` or ``"process"``: the level the program ran under.
    """

    status: str
    passed: bool
    duration: float
    stdout: str
    stderr: str
    detail: str
    returncode: Optional[int]
    cpu_time: Optional[float]
    isolation: str


def _check_real(name, x, *, low, high=math.inf):
    if isinstance(x, bool) or not isinstance(x, numbers.Real):
        raise TypeError(f"{name}: expected a number, got {type(x).__name__}")
    v = float(x)
    if not (low < v <= high):  # also refuses NaN
        raise ValueError(f"{name}: must be in ({low}, {high}], got {x!r}")
    return v


def _check_int(name, x, *, low, high=None):
    if isinstance(x, bool) or not isinstance(x, numbers.Integral):
        raise TypeError(f"{name}: expected an int, got {type(x).__name__}")
    v = int(x)
    if v < low or (high is not None and v > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name}: must be {bound}, got {v}")
    return v


@dataclass(frozen=True)
class SandboxLimits:
    """Resource limits of one sandboxed run (checked on construction).

    Parameters
    ----------
    timeout : float
        Wall-clock seconds, > 0 (at most one day). The run is killed when they are over.
    memory_mb : int
        Memory of the whole sandbox in MiB, >= 64: the address-space limit (``RLIMIT_AS``) of each
        of its processes, and the bound on their summed proportional set size (checked every
        40 ms; the tree is killed and the run scored ``"memory"`` once it is over). The
        interpreter itself takes about 20 MiB of it.
    cpu_seconds : int or None
        CPU-time limit (``RLIMIT_CPU``) of each process in seconds, >= 1; None: ``ceil(timeout)``.
    file_mb : int
        Largest file the program may write (``RLIMIT_FSIZE``) in MiB, >= 1; stdout and stderr
        count as files.
    max_processes : int
        Processes and threads the program may have at once, itself included (``RLIMIT_NPROC``),
        >= 1; enforced in namespace mode and for a non-root evaluator only.
    output_chars : int
        How much of stdout (head) and stderr (tail) to keep, >= 0.
    """

    timeout: float = 5.0
    memory_mb: int = 1024
    cpu_seconds: Optional[int] = None
    file_mb: int = 16
    max_processes: int = 32
    output_chars: int = 4000

    def __post_init__(self):
        set_ = object.__setattr__
        set_(self, "timeout", _check_real("timeout", self.timeout, low=0.0, high=86400.0))
        set_(self, "memory_mb", _check_int("memory_mb", self.memory_mb, low=64))
        if self.cpu_seconds is not None:
            set_(self, "cpu_seconds", _check_int("cpu_seconds", self.cpu_seconds, low=1))
        set_(self, "file_mb", _check_int("file_mb", self.file_mb, low=1))
        set_(self, "max_processes", _check_int("max_processes", self.max_processes, low=1, high=4096))
        set_(self, "output_chars", _check_int("output_chars", self.output_chars, low=0))

    @property
    def cpu_limit(self) -> int:
        """The CPU-time limit in whole seconds."""
        return self.cpu_seconds if self.cpu_seconds is not None else max(1, math.ceil(self.timeout))


# --------------------------------------------------------------------------------------------
# Isolation level
# --------------------------------------------------------------------------------------------

class _SlotPool:
    """Hands out slot numbers 0..n-1 to concurrent runs (one unprivileged uid per slot)."""

    def __init__(self, n: int):
        self._free = list(range(n))
        self._cv = threading.Condition()

    @contextlib.contextmanager
    def take(self):
        with self._cv:
            while not self._free:
                self._cv.wait()
            slot = self._free.pop(0)
        try:
            yield slot
        finally:
            with self._cv:
                self._free.append(slot)
                self._free.sort()
                self._cv.notify()


_SLOTS = _SlotPool(_MAX_SLOTS)
_NS_LOCK = threading.Lock()
_NS_STATE: dict = {}  # "caps": list of setpriv capability options, or "reason": why unavailable


def _slot_uid(slot: int) -> int:
    # Distinct per evaluator process (by pid) and per slot, so that concurrent evaluators on one
    # machine do not share an RLIMIT_NPROC count.
    return SANDBOX_UID_BASE + (os.getpid() % (1 << 20)) * _MAX_SLOTS + slot


def _namespace_prefix(uid: int, caps) -> list:
    setpriv, unshare = shutil.which("setpriv"), shutil.which("unshare")
    return [setpriv, "--pdeathsig", "KILL", "--",  # the evaluator dies: unshare dies
            unshare, "--pid", "--fork", "--net", "--ipc", "--kill-child", "--",
            setpriv, "--reuid", str(uid), "--regid", str(uid), "--clear-groups", "--no-new-privs",
            "--pdeathsig", "KILL", *caps, "--"]


_NO_CAPS = ["--inh-caps=-all", "--bounding-set=-all"]
_READ_CAPS = ["--inh-caps=-all,+dac_read_search", "--ambient-caps=+dac_read_search",
              "--bounding-set=-all,+dac_read_search"]


def _probe_namespace() -> dict:
    if not sys.platform.startswith("linux"):
        return {"reason": "namespaces need Linux"}
    if os.geteuid() != 0:
        return {"reason": "namespaces and a per-slot uid need root"}
    if not (shutil.which("unshare") and shutil.which("setpriv")):
        return {"reason": "util-linux unshare/setpriv not found"}
    limits = SandboxLimits(timeout=20.0, memory_mb=256)
    # The sandbox must run this very interpreter: one that cannot read its own installation may
    # still start from another library (a system Python of the same minor version) and differ.
    program = "import os, sys\ndef f():\n    return sys.version, sys.base_prefix, os.__file__\n"
    test = f"def check(f):\n    assert f() == {(sys.version, sys.base_prefix, os.__file__)!r}, f()\n"
    reason = ""
    for caps in (_NO_CAPS, _READ_CAPS):  # prefer no capability at all
        r = _run(program, test, "f", limits, ("namespace", caps), None)
        if r.passed:
            return {"caps": caps}
        reason = f"probe run: {r.status}: {r.detail} {r.stderr[-300:]}".strip()
    return {"reason": reason}


def isolation_details() -> dict:
    """What namespace mode gives on this machine (runs the probe once).

    Returns
    -------
    dict
        ``{"namespace": True, "capabilities": [...]}`` (the capabilities the sandboxed user keeps:
        ``[]`` or ``["dac_read_search"]``), or ``{"namespace": False, "reason": str}``.
    """
    resolve_isolation("auto")
    if "caps" in _NS_STATE:
        return {"namespace": True, "capabilities": ["dac_read_search"] if _NS_STATE["caps"] is _READ_CAPS else []}
    return {"namespace": False, "reason": _NS_STATE["reason"]}


def resolve_isolation(isolation: str = "auto") -> str:
    """The isolation level a run with ``isolation`` gets here.

    Parameters
    ----------
    isolation : {"auto", "namespace", "process"}
        ``"auto"``: namespace mode where available (root, Linux, util-linux ``unshare`` and
        ``setpriv`` that work: checked once per process with a probe run), else process mode.

    Returns
    -------
    str
        ``"namespace"`` or ``"process"``.

    Raises
    ------
    RuntimeError
        ``isolation="namespace"`` where it is not available (the message says why).
    """
    if not isinstance(isolation, str):
        raise TypeError(f"isolation: expected a str, got {type(isolation).__name__}")
    if isolation not in ISOLATIONS:
        raise ValueError(f"isolation: expected one of {', '.join(map(repr, ISOLATIONS))}, got {isolation!r}")
    if isolation == "process":
        return "process"
    with _NS_LOCK:
        if not _NS_STATE:
            _NS_STATE.update(_probe_namespace())
    if "caps" in _NS_STATE:
        return "namespace"
    if isolation == "namespace":
        raise RuntimeError(f"isolation: 'namespace' is not available here: {_NS_STATE['reason']}")
    return "process"


# --------------------------------------------------------------------------------------------
# Evaluator side
# --------------------------------------------------------------------------------------------

def run_program(program: str, test: str, entry_point: str, *, timeout: float = 5.0,
                memory_mb: int = 1024, cpu_seconds: Optional[int] = None, file_mb: int = 16,
                max_processes: int = 32, output_chars: int = 4000,
                isolation: str = "auto") -> ExecResult:
    """Run ``program``, then ``test``, then ``check(<entry_point>)`` in a sandbox.

    Equivalent to HumanEval's ``exec(program + "\\n" + test + "\\n" + f"check({entry_point})")``
    in a fresh interpreter, except that the program is compiled on its own first (so that a
    program that does not compile is told apart from a failing one) and its globals form a module
    named ``__program__`` (so ``if __name__ == "__main__":`` blocks do not run).

    Parameters
    ----------
    program : str
        The program, e.g. a HumanEval ``prompt + completion``.
    test : str
        Test source defining ``check(candidate)``, which raises (e.g. ``AssertionError``) on a
        wrong answer.
    entry_point : str
        Name of the function the program defines and ``check`` receives; a Python identifier.
    timeout, memory_mb, cpu_seconds, file_mb, max_processes, output_chars
        Resource limits, see :class:`SandboxLimits`.
    isolation : {"auto", "namespace", "process"}
        See :func:`resolve_isolation` and the module docstring.

    Returns
    -------
    ExecResult
        Never raises for anything the program does: a program that loops, allocates without
        bound, crashes, exits, forks or signals is scored, not propagated.

    Raises
    ------
    TypeError, ValueError
        A bad argument (the message names it).
    RuntimeError
        ``isolation="namespace"`` where it is not available.
    """
    program, test, entry_point = _check_sources(program, test, entry_point)
    limits = SandboxLimits(timeout=timeout, memory_mb=memory_mb, cpu_seconds=cpu_seconds,
                           file_mb=file_mb, max_processes=max_processes, output_chars=output_chars)
    return _run_resolved(program, test, entry_point, limits, resolve_isolation(isolation))


def _check_sources(program, test, entry_point):
    for name, x in (("program", program), ("test", test), ("entry_point", entry_point)):
        if not isinstance(x, str):
            raise TypeError(f"{name}: expected a str, got {type(x).__name__}")
    if not entry_point.isidentifier():
        raise ValueError(f"entry_point: expected a Python identifier, got {entry_point!r}")
    return program, test, entry_point


def _run_resolved(program: str, test: str, entry_point: str, limits: SandboxLimits, mode: str,
                  stop: Optional[threading.Event] = None) -> ExecResult:
    """:func:`run_program` after its checks, ``mode`` from :func:`resolve_isolation`; setting
    ``stop`` kills the run early (scored ``"error"``)."""
    if mode == "namespace":
        return _run(program, test, entry_point, limits, ("namespace", _NS_STATE["caps"]), stop)
    return _run(program, test, entry_point, limits, ("process", None), stop)


_SCRIPT = os.path.abspath(__file__)


def _site_packages() -> list:
    import site
    return [p for p in site.getsitepackages() if os.path.isdir(p)]


def _error(detail, mode):
    return ExecResult("error", False, 0.0, "", "", detail, None, None, mode)


def _run(program, test, entry_point, limits, mode_caps, stop) -> ExecResult:
    mode, caps = mode_caps
    if resource is None or not hasattr(os, "waitid"):
        return _error("the sandbox needs a POSIX system with waitid", mode)
    if not sys.executable:
        return _error("sys.executable is unknown: cannot start an interpreter", mode)
    with _SLOTS.take() as slot:
        uid = _slot_uid(slot)
        workdir = tempfile.mkdtemp(prefix="dllm-eval-")
        key = secrets.token_bytes(32)  # signs the reports; the program never sees it through a file
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            if mode == "namespace":
                os.chown(workdir, uid, uid)
            payload = {
                "program": program, "test": test, "entry_point": entry_point, "mode": mode, "key": key.hex(),
                "cpu": limits.cpu_limit, "memory": limits.memory_mb << 20, "fsize": limits.file_mb << 20,
                "nproc": limits.max_processes, "nofile": _MAX_OPEN_FILES, "site_packages": _site_packages(),
            }
            with tempfile.TemporaryFile() as fin, tempfile.TemporaryFile() as fout, \
                    tempfile.TemporaryFile() as ferr:
                fin.write(json.dumps(payload).encode("utf-8"))
                fin.flush()
                fin.seek(0)
                cmd = [sys.executable, "-I", "-S", _SCRIPT, str(fin.fileno()), str(theirs.fileno())]
                if mode == "namespace":
                    cmd = _namespace_prefix(uid, caps) + cmd
                env = {"PATH": "/usr/local/bin:/usr/bin:/bin",
                       "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
                       "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
                t0 = time.monotonic()
                try:
                    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=fout, stderr=ferr,
                                            pass_fds=(fin.fileno(), theirs.fileno()), cwd=workdir,
                                            env=env, start_new_session=True)
                except OSError as e:
                    return _error(f"could not start the sandbox: {e}", mode)
                finally:
                    theirs.close()
                channel = _Channel(ours)
                killed = _wait(proc, t0 + limits.timeout, stop, uid if mode == "namespace" else None,
                               channel, limits.memory_mb << 20)
                duration = time.monotonic() - t0
                channel.drain()
                records = _records(channel.messages, key)
                stdout = _head(fout, limits.output_chars)
                stderr = _tail(ferr, limits.output_chars)
        finally:
            theirs.close()
            ours.close()
            _remove_tree(workdir)
    return _classify(killed, stop, proc.returncode, records, stdout, stderr, duration, limits, mode)


class _Channel:
    """The evaluator's end of the report socket: keeps the first 1 MiB of messages, drains the rest
    (so that a program flooding it cannot block the real report)."""

    def __init__(self, sock: socket.socket):
        self.sock, self.messages, self.size = sock, [], 0
        sock.setblocking(False)

    def fileno(self) -> int:
        return self.sock.fileno()

    def drain(self) -> None:
        while True:
            try:
                msg = self.sock.recv(1 << 16)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if not msg:  # every sender is gone
                return
            if self.size < 1 << 20:
                self.messages.append(msg)
                self.size += len(msg)


def _children(pid: int) -> list:
    """Pids of the children of every thread of ``pid`` (Linux ``/proc/PID/task/TID/children``)."""
    out = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
            out.extend(int(x) for x in f.read().split())
    return out


def _rss_bytes(pid: int) -> int:
    """Proportional set size of ``pid`` (pages shared with other processes, e.g. after a fork,
    count once across them), else its resident set size; 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
            for line in f:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1]) << 10
    except (OSError, ValueError, IndexError):
        pass
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


def _children_by_scan() -> dict:
    """{ppid: [pid, ...]} of every process, from ``/proc/PID/stat`` (where the kernel does not
    list children per task)."""
    out: dict = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat", "rb") as f:
                    stat = f.read()
                ppid = int(stat[stat.rfind(b")") + 2:].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            out.setdefault(ppid, []).append(int(d))
    return out


def _tree_memory(root: int) -> int:
    """Bytes held by ``root`` and all its descendants (see :func:`_rss_bytes`)."""
    by_parent = None if _CHILDREN_FILES else _children_by_scan()
    total, stack, seen = 0, [root], set()
    while stack:
        pid = stack.pop()
        if pid in seen:
            continue
        seen.add(pid)
        total += _rss_bytes(pid)
        try:
            stack.extend(_children(pid) if by_parent is None else by_parent.get(pid, ()))
        except (OSError, ValueError):
            continue
    return total


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_WATCH_INTERVAL = 0.04  # seconds between two measurements of the process tree's memory
_CHILDREN_FILES = os.path.exists(f"/proc/{os.getpid()}/task/{os.getpid()}/children")
_WATCHDOG = os.path.isdir("/proc/self")


def _wait(proc: subprocess.Popen, deadline: float, stop, uid: Optional[int], channel: "_Channel",
          memory: int) -> Optional[str]:
    """Wait for the sandbox until ``deadline``, draining ``channel`` and killing the sandbox once
    its process tree holds more than ``memory`` bytes; kill its process group; reap it; wait until
    its processes (all of ``uid``'s if given) are gone. Returns why it was killed early
    (``"timeout"``, ``"stop"`` or ``"memory"``) or None."""
    killed = None
    try:  # a pidfd turns readable when the process exits: no polling delay (Linux >= 5.3)
        pidfd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):
        pidfd = None
    try:
        next_watch = time.monotonic()
        while True:
            try:
                # WNOWAIT: the exited leader stays a zombie, so its pid (= the process group id)
                # cannot be reused before the group is killed below.
                if os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                    break
            except ChildProcessError:  # someone else reaped it (SIGCHLD ignored in this process)
                break
            now = time.monotonic()
            if now >= deadline:
                killed = "timeout"
                break
            if stop is not None and stop.is_set():
                killed = "stop"
                break
            if _WATCHDOG and now >= next_watch:
                if _tree_memory(proc.pid) > memory:
                    killed = "memory"
                    break
                next_watch = now + _WATCH_INTERVAL
            wait = max(0.0, min(_WATCH_INTERVAL, deadline - now))
            # Wake on exit (pidfd) or a report; at least every interval for the watchdog and `stop`.
            ready, _, _ = select.select([channel] + ([pidfd] if pidfd is not None else []), [], [], wait)
            if channel in ready:
                channel.drain()
    finally:
        if pidfd is not None:
            os.close(pidfd)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(proc.pid, signal.SIGKILL)  # the leader, had it left its group
    try:
        _, status = os.waitpid(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    except ChildProcessError:
        proc.returncode = None
    # SIGKILLed processes die asynchronously; a namespace's init waits for its members, but nobody
    # waits for a killed init. Return only when they are gone (or after 2 s, in case one hangs in
    # the kernel), so that no process outlives its run and a slot's uid is free when reused.
    give_up = time.monotonic() + 2.0
    while _lingering(proc.pid, uid) and time.monotonic() < give_up:
        time.sleep(0.005)
        channel.drain()
    return killed


def _lingering(pgid: int, uid: Optional[int]) -> bool:
    """Whether a live (not zombie) process of the run remains: one of the slot's ``uid`` in
    namespace mode (the uid is the run's alone), one in the process group ``pgid`` otherwise."""
    if not os.path.isdir("/proc/self"):
        return False
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat", "rb") as f:
                stat = f.read()
            fields = stat[stat.rfind(b")") + 2:].split()  # after "pid (comm) "
            if fields[0] == b"Z":
                continue
            if uid is None and int(fields[2]) == pgid:
                return True
            if uid is not None:  # the real uid (the owner of /proc/PID follows "dumpable")
                with open(f"/proc/{d}/status", "rb") as f:
                    if int(f.read().split(b"\nUid:", 1)[1].split()[0]) == uid:
                        return True
        except (OSError, IndexError, ValueError):
            continue
    return False


def _records(messages, key: bytes) -> dict:
    """The first worker outcome and the first supervisor exit record on the report channel whose
    HMAC under ``key`` is right (anything else the program wrote there is ignored)."""
    out = {}
    for msg in messages:
        for line in msg.splitlines():
            fields = _unseal(line, key)
            if fields and fields[0] == "outcome" and len(fields) == 3 and "outcome" not in out:
                out["outcome"] = {"status": fields[1], "detail": fields[2]}
            elif fields and fields[0] == "exit" and len(fields) == 3 and "exit" not in out:
                with contextlib.suppress(ValueError, SyntaxError):
                    out["exit"] = {"returncode": ast.literal_eval(fields[1]), "cpu": ast.literal_eval(fields[2])}
    return out


def _unseal(line: bytes, key: bytes) -> Optional[list]:
    """The fields of a line made by the sandbox's ``seal``, or None if its MAC is wrong."""
    mac, _, body = line.partition(b" ")
    want = hmac.new(key, body, hashlib.sha256).hexdigest().encode("ascii")
    if not hmac.compare_digest(mac, want):
        return None
    try:
        return [bytes.fromhex(f.decode("ascii")).decode("utf-8", "replace") for f in body.split(b" ")]
    except ValueError:
        return None


def _head(f, n: int) -> str:
    f.seek(0)
    data = f.read(4 * n + 4)
    text = data.decode("utf-8", "replace")
    size = os.fstat(f.fileno()).st_size
    if len(text) > n or size > len(data):
        return text[:n] + f"\n...[stdout truncated: {size} bytes in all]"
    return text


def _tail(f, n: int) -> str:
    size = os.fstat(f.fileno()).st_size
    f.seek(max(0, size - 4 * n - 4))
    text = f.read().decode("utf-8", "replace")
    if len(text) > n or size > 4 * n + 4:
        return f"[stderr truncated: {size} bytes in all]...\n" + (text[-n:] if n else "")
    return text


def _remove_tree(path: str) -> None:
    try:
        shutil.rmtree(path)
    except OSError:
        # The program made a directory unreadable or read-only (only an obstacle for a non-root
        # evaluator): as the owner, give every directory its permissions back, then remove.
        stack = [path]
        while stack:
            d = stack.pop()
            with contextlib.suppress(OSError):
                os.chmod(d, 0o700)
                with os.scandir(d) as entries:
                    stack.extend(e.path for e in entries if e.is_dir(follow_symlinks=False))
        shutil.rmtree(path, ignore_errors=True)


def _signame(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


def _classify(killed, stop, sandbox_rc, records, stdout, stderr, duration, limits, mode) -> ExecResult:
    def result(status, detail, rc=None, cpu=None):
        return ExecResult(status, status == "passed", duration, stdout, stderr, detail, rc, cpu, mode)

    if killed == "stop":
        return result("error", "stopped: the evaluation was interrupted")
    if killed == "memory":
        return result("memory", f"the program's processes held more than {limits.memory_mb} MiB together")
    if killed:
        return result("timeout", f"wall-clock limit of {limits.timeout:g} s")
    exit_rec, outcome = records.get("exit"), records.get("outcome")
    if exit_rec is None:
        # The supervisor did not finish: it could not start (bad interpreter, namespaces refused)
        # or was killed from outside.
        how = f"exit code {sandbox_rc}" if sandbox_rc is None or sandbox_rc >= 0 else f"killed by {_signame(-sandbox_rc)}"
        return result("error", f"the sandbox did not report ({how})")
    rc, cpu = exit_rec.get("returncode"), exit_rec.get("cpu")
    if outcome is not None and outcome.get("status") in STATUSES:
        return result(outcome["status"], str(outcome.get("detail", "")), rc, cpu)
    if rc is not None and rc < 0:  # killed before it could report
        sig = -rc
        if sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu is not None and cpu >= limits.cpu_limit - 0.05):
            return result("timeout", f"CPU-time limit of {limits.cpu_limit} s", rc, cpu)
        if any(w in stderr for w in _MEMORY_WORDS):
            return result("memory", f"killed by {_signame(sig)} after running out of memory", rc, cpu)
        return result("failed", f"killed by {_signame(sig)}", rc, cpu)
    return result("failed", f"the program exited (code {rc}) before the tests finished", rc, cpu)
