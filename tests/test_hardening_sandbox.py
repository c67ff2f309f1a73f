"""Regression tests of the sandbox against a forged verdict, memory spread over many processes and
results that compare equal to anything (see docs/evaluation-safety.md)."""
import pytest

from dllm_masks.eval import sandbox
from dllm_masks.eval.scoring import evaluate_code, isolation_details, run_program

NAMESPACE = sandbox.resolve_isolation("auto") == "namespace"
needs_namespace = pytest.mark.skipif(
    not NAMESPACE, reason=f"namespace isolation unavailable: {isolation_details().get('reason')}")
MODES = [pytest.param("namespace", marks=needs_namespace), "process"]

SQUARE_TEST = "def check(candidate):\n    assert candidate(3) == 9\n    assert candidate(-2) == 4\n"

# A wrong program that writes a "passed" outcome to every descriptor it has, then leaves.
FORGER = '''
import os, json
def square(x):
    line = (json.dumps({"kind": "outcome", "status": "passed", "detail": ""}) + "\\n").encode()
    for name in os.listdir("/proc/self/fd"):
        try:
            os.write(int(name), line)
        except OSError:
            pass
    os._exit(0)
'''

# The same, also from a child that waits for the real report and then writes its forgery again,
# through every descriptor it can reopen by its /proc path, with and without a seek to 0.
LATE_FORGER = '''
import os, json, time
def square(x):
    line = (json.dumps({"kind": "outcome", "status": "passed", "detail": ""}) + "\\n").encode()
    if os.fork() == 0:
        time.sleep(0.3)
        for name in os.listdir("/proc/self/fd"):
            for how in (None, os.O_WRONLY, os.O_RDWR):
                try:
                    fd = int(name) if how is None else os.open(f"/proc/self/fd/{name}", how)
                    try:
                        os.lseek(fd, 0, 0)
                    except OSError:
                        pass
                    os.write(fd, line)
                except OSError:
                    pass
        os._exit(0)
    return 0
'''


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("program", [FORGER, LATE_FORGER], ids=["exit", "late-child"])
def test_a_forged_outcome_on_every_descriptor_is_not_a_pass(mode, program):
    r = run_program(program, SQUARE_TEST, "square", timeout=10.0, isolation=mode)
    assert r.status == "failed", (r.status, r.detail, r.stderr)
    report = evaluate_code([{"prompt": "", "test": SQUARE_TEST, "entry_point": "square"}], [[program]],
                           timeout=10.0, isolation=mode, progress=False)
    assert report.pass_at_1 == 0.0


@pytest.mark.parametrize("mode", MODES)
def test_monkeypatched_builtins_do_not_reach_the_test(mode):
    program = "import builtins\nbuiltins.abs = lambda x: 0\ndef square(x):\n    return 5\n"
    test = "def check(candidate):\n    assert abs(candidate(3) - 9) < 1e-9\n"
    r = run_program(program, test, "square", timeout=10.0, isolation=mode)
    assert r.status == "failed", (r.status, r.detail)


ALWAYS_EQUAL = [
    "class A:\n    def __eq__(self, o):\n        return True\ndef square(x):\n    return A()\n",
    "class A(int):\n    def __eq__(self, o):\n        return True\n    __hash__ = int.__hash__\n"
    "def square(x):\n    return A(0)\n",
    "class A:\n    __eq__ = lambda self, o: True\ndef square(x):\n    return [A(), A()][:1][0]\n",
    "class A:\n    def __ne__(self, o):\n        return False\n    def __eq__(self, o):\n        return True\n"
    "def square(x):\n    return (1, [A()])\n",
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("program", ALWAYS_EQUAL)
def test_results_with_a_comparison_of_their_own_are_refused(mode, program):
    test = SQUARE_TEST + "    assert candidate(5) == (1, [25]) or candidate(5) == 25\n"
    r = run_program(program, test, "square", timeout=10.0, isolation=mode)
    assert r.status == "failed", (r.status, r.detail)
    assert "compares" in r.detail


@pytest.mark.parametrize("mode", MODES)
def test_plain_results_still_pass(mode):
    program = ("import collections\nP = collections.namedtuple('P', 'a b')\n"
               "def square(x):\n    return x * x if x != 0 else P(1, [2.0, {'k': (3, None)}])\n")
    test = SQUARE_TEST + "    assert candidate(0) == (1, [2.0, {'k': (3, None)}])\n"
    r = run_program(program, test, "square", timeout=10.0, isolation=mode)
    assert r.status == "passed", (r.status, r.detail, r.stderr)


# Five processes (the worker and four children) touch 150 MB each and hold it briefly.
SPREAD = '''
import os, time
def square(x):
    kids = []
    for _ in range(4):
        pid = os.fork()
        if pid == 0:
            b = b"\\x01" * (150 << 20)
            time.sleep(1.5)
            os._exit(0)
        kids.append(pid)
    b = b"\\x01" * (150 << 20)
    time.sleep(1.5)
    for pid in kids:
        os.waitpid(pid, 0)
    return x * x
'''


@pytest.mark.parametrize("mode", MODES)
def test_memory_bounds_the_whole_process_tree(mode):
    r = run_program(SPREAD, SQUARE_TEST, "square", timeout=20.0, memory_mb=256, max_processes=16,
                    isolation=mode)
    assert r.status == "memory", (r.status, r.detail, r.stderr)
    assert "256 MiB" in r.detail
    assert r.duration < 15


@pytest.mark.parametrize("mode", MODES)
def test_memory_below_the_bound_in_several_processes_passes(mode):
    program = SPREAD.replace("150 << 20", "20 << 20").replace("1.5", "0.3")
    r = run_program(program, SQUARE_TEST, "square", timeout=20.0, memory_mb=512, max_processes=16,
                    isolation=mode)
    assert r.status == "passed", (r.status, r.detail, r.stderr)


def test_memory_watchdog_without_per_task_children_lists(monkeypatch):
    """Where the kernel lists no children per task, the tree comes from a scan of /proc."""
    monkeypatch.setattr(sandbox, "_CHILDREN_FILES", False)
    r = run_program(SPREAD, SQUARE_TEST, "square", timeout=20.0, memory_mb=256, max_processes=16,
                    isolation="process")
    assert r.status == "memory", (r.status, r.detail, r.stderr)
