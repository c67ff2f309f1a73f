"""One prepared run of the Triton ``priority_mask`` kernel on a CUDA GPU (fits in 8 minutes).

    bash benchmarks/gpu_check.sh [--out DIR]     # on a machine with a CUDA GPU (default out/gpu_check)
    .venv/bin/python benchmarks/gpu_check.py --dry-run --out /tmp/gc   # the CPU stand-in, without a GPU

Phases, each written to ``<out>/gpu_check.json`` as soon as it ends (a run cut short still
reports what it measured):

1. ``env``: versions, GPU, and the PTX of the kernels compiled for this GPU: float64 arithmetic
   must be ``mul.rn``/``add.rn``/``div.rn`` with no ``fma`` (docs/design.md §7);
2. ``graph``: a CUDA-graph capture of the public op (seed and offset as device tensors,
   ``validate=False``), replayed with the rng tensor updated in between; every replay must equal the
   CPU reference bit for bit, and different seeds must give different masks;
3. ``pytest``: ``tests/test_priority_mask_triton.py`` compiled on the GPU (bit-equality with the CPU
   reference on the awkward shapes, golden vectors, hypothesis cases; graphs, torch.compile, no sync);
4. ``timings``: the benchmark workload of ``benchmarks/common.py`` (sequences of 2048, 25 %
   priority, σ ~ U[0.3, 0.8], w = 2, complementary, labels) at T = 1M, 4M, 16M, 64M tokens for
   ``ref`` (eager reference), ``compiled`` (torch.compile of the reference), ``dfactory`` (uniform
   ``rand < t`` masking), ``triton`` (the public op, eager), ``triton_out`` (the same writing into
   reused buffers, ``out=``), ``triton_plan`` (the same through ``dm.MaskPlan``: arguments checked
   once, not per call), ``triton_graph`` (the same op
   replayed from a CUDA graph: device time without launch gaps), ``triton_blocks`` and
   ``triton_blocks_graph`` (the same two with one σ per block of 32 positions on the same tokens:
   the run kernel, runs of whole blocks per program; checked against the reference too) and
   ``copy`` (a device copy of the same bytes: the floor). Medians of ``triton.testing.do_bench`` (device events, L2 flushed
   between repeats); a case that would not fit the time budget is skipped and says so.

``--block-size 32`` times σ per block of 32 positions instead of per sequence (the block-diffusion
recipe); run it as a second pass, e.g. ``--skip graph,pytest,variants --block-size 32``.

``--dry-run`` runs every phase on the CPU: the kernels in Triton's interpreter, tiny sizes, host
timers, a test subset. It checks the script, not the GPU: its times mean nothing.
"""
from __future__ import annotations

import os
import sys

DRY = "--dry-run" in sys.argv
# The interpreter must be chosen before Triton or the kernels are imported.
os.environ["TRITON_INTERPRET"] = "1" if DRY else "0"

import argparse  # noqa: E402
import datetime as _dt  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
import common as C  # noqa: E402
from dllm_masks.testing import capture_graph  # noqa: E402

import dllm_masks as dm  # noqa: E402
from dllm_masks.reference import priority_mask_ref  # noqa: E402

SIZES = {"1M": 1 << 20, "4M": 1 << 22, "16M": 1 << 24, "64M": 1 << 26}
PROVIDERS = ["copy", "triton", "triton_out", "triton_plan", "triton_graph", "triton_blocks", "triton_blocks_graph", "dfactory", "ref",
             "compiled"]
RUN_BLOCK = 32  # the block size of the triton_blocks providers (the block-diffusion recipe)
TARGETS = "T = 16M: >= 75 % of copy bandwidth, >= 20x eager ref, >= 3x compiled ref; T = 1M: <= 2x the copy floor"


class Budget:
    """Seconds left before the run must end."""

    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()


def log(msg: str) -> None:
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------------------------------------
# Phase 1: environment and PTX
# ---------------------------------------------------------------------------------------------
def phase_env(dev: str, out: Path) -> dict:
    import triton

    info = {"machine": C.machine_info(dev), "triton": triton.__version__, "torch": torch.__version__,
            "backends": dm.available_backends()}
    if dev == "cuda":
        cap = torch.cuda.get_device_capability()
        info["capability"] = list(cap)
        info["gpu"] = torch.cuda.get_device_name()
        info["gpu_mem_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    arch = 90 if dev != "cuda" else cap[0] * 10 + cap[1]
    # AOT compile in a child without TRITON_INTERPRET, so the dry run checks the PTX too.
    code = ("import collections, json, sys\n"
            "from dllm_masks.triton_kernels import priority_mask as tk\n"
            "res = {}\n"
            "for kern, exact, K in (('mask', False, 0), ('mask', True, 0), ('stats', True, 0), ('blocks', False, 32)):\n"
            f"    asm = tk.compile_for_inspection(kern, {arch}, exact=exact, block_size=K)\n"
            "    ops = collections.Counter(l.split()[0] for l in asm['ptx'].splitlines()\n"
            "                              if '.f64' in l and l.strip() and not l.strip().startswith('//'))\n"
            "    res[f'{kern}-exact{int(exact)}-K{K}'] = dict(ops)\n"
            "    if kern == 'mask' and not exact and K == 0:\n"
            f"        open({str(out / 'mask_kernel.ptx')!r}, 'w').write(asm['ptx'])\n"
            "json.dump(res, sys.stdout)\n")
    r = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, TRITON_INTERPRET="0"), cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        info["ptx"] = {"error": r.stderr[-2000:]}
        info["ptx_ok"] = False
    else:
        ptx = json.loads(r.stdout)
        bad = {k: [op for op in ops if op.startswith("fma") or (op.startswith("div") and op != "div.rn.f64")]
               for k, ops in ptx.items()}
        info["ptx"] = ptx
        info["ptx_ok"] = not any(bad.values()) and all(ops.get("div.rn.f64", 0) > 0 for ops in ptx.values())
    log(f"env: torch {torch.__version__}, triton {triton.__version__}, {info.get('gpu', 'no GPU')}; "
        f"float64 PTX fma-free with div.rn: {info['ptx_ok']}")
    return info


# ---------------------------------------------------------------------------------------------
# Phase 2: CUDA graph capture and replay with the rng tensor updated between replays
# ---------------------------------------------------------------------------------------------
def _packed(lengths, block_size, seed=21):
    from dllm_masks.testing import packed_case

    return packed_case(lengths, seed=seed, weight=2.0, complementary=True, loss_weight="sigma", block_size=block_size)


def phase_graph(dev: str) -> dict:
    from dllm_masks.testing import assert_same

    res = {}
    lengths = ([2048] * 24 if dev == "cuda" else [300]) + [4097, 100, 0, 5, 31]
    for block_size in (None, 32):
        name = f"block_size={block_size}"
        kw = _packed(lengths, block_size)
        d = {k: (v.to(dev) if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
        d["seed"] = torch.tensor(5, dtype=torch.int64, device=dev)
        d["seq_offset"] = torch.tensor(0, dtype=torch.int64, device=dev)
        fn = lambda: dm.priority_mask(**d, validate=False, backend="triton")  # noqa: E731
        if dev == "cuda":
            replay, out = capture_graph(fn)
        else:  # dry run: the same checks around an eager call
            box = {}
            replay = lambda: box.__setitem__("out", fn())  # noqa: E731
        masks, ok, err = [], True, None
        try:
            for seed, off in ((5, 0), (6, 0), (-3, 1234), (5, 7)):
                d["seed"].fill_(seed)
                d["seq_offset"].fill_(off)
                replay()
                if dev == "cuda":
                    torch.cuda.synchronize()
                else:
                    out = box["out"]
                ref = dm.priority_mask(**dict(kw, seed=seed, seq_offset=off), backend="ref")
                assert_same(ref, out, f"graph replay seed={seed} offset={off}")
                masks.append(out.masked.clone())
            fresh = not torch.equal(masks[0], masks[1]) and not torch.equal(masks[0], masks[3])
            ok = fresh
            if not fresh:
                err = "replays with another seed or offset gave the same masks"
        except AssertionError as e:
            ok, err = False, str(e)
        res[name] = {"ok": ok, "error": err, "tokens": sum(lengths), "captured": dev == "cuda"}
        log(f"graph {name}: {'ok' if ok else 'FAILED: ' + str(err)}")
    return res


# ---------------------------------------------------------------------------------------------
# Phase 3: the Triton tests, compiled on the GPU
# ---------------------------------------------------------------------------------------------
def phase_pytest(dev: str, out: Path, budget: Budget, cap_s: float) -> dict:
    timeout = max(30.0, min(cap_s, budget.left() - 30))
    cmd = [sys.executable, "-P", "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_priority_mask_triton.py",
           f"--junitxml={out / 'pytest.xml'}"]
    if DRY:
        cmd += ["-k", "golden or philox or padded"]
    elif importlib.util.find_spec("xdist") is not None:
        cmd += ["-n", "4"]  # compiles the kernel variants in parallel
    env = dict(os.environ, TRITON_INTERPRET="1" if DRY else "0", PYTHONUNBUFFERED="1")
    log(f"pytest: {' '.join(cmd[3:])} (timeout {timeout:.0f} s)")
    t0 = time.monotonic()
    # its own process group, so that a timeout also stops xdist's workers (they hold the GPU)
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        text, _ = proc.communicate(timeout=timeout)
        rc = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        text, _ = proc.communicate()
        rc = "timeout"
    (out / "pytest.log").write_text(text)
    summary = next((ln for ln in reversed(text.splitlines()) if " passed" in ln or " failed" in ln or " error" in ln),
                   text.splitlines()[-1] if text.strip() else "")
    log(f"pytest: rc={rc} {summary.strip()} ({time.monotonic() - t0:.0f} s)")
    return {"rc": rc, "summary": summary.strip(), "seconds": round(time.monotonic() - t0, 1), "cmd": cmd[3:]}


# ---------------------------------------------------------------------------------------------
# Phase 4: timings
# ---------------------------------------------------------------------------------------------
def _timer(dev: str):
    if dev == "cuda":
        import triton.testing

        def bench(fn):
            med, p20, p80 = triton.testing.do_bench(fn, warmup=25, rep=100, quantiles=[0.5, 0.2, 0.8])
            return {"median_ms": med, "p20_ms": p20, "p80_ms": p80, "timer": "do_bench (device events)"}
    else:
        def bench(fn):
            return dict(C.summarize(C.time_cpu(fn, min_reps=2, max_reps=5, budget_s=0.2, warmup=1)),
                        timer="host clock (dry run: meaningless)")
    return bench


def phase_timings(dev: str, sizes, providers, budget: Budget, record: dict, save, block_size=None) -> list:
    from bench_priority_mask import op_args, with_block_size
    from dllm_masks.testing import assert_same

    bench = _timer(dev)
    rows = record.setdefault("results", [])
    skipped = record.setdefault("skipped", [])
    for label, T in sizes:
        if budget.left() < 20:
            skipped.append({"T": T, "provider": "*", "why": "time budget spent"})
            continue
        kw = with_block_size(C.workload(T, device=dev), block_size)
        nbytes = C.essential_bytes(kw)
        dkw = dict(kw, seed=torch.tensor(kw["seed"], device=dev), seq_offset=torch.tensor(0, device=dev))
        triton_fn = lambda: dm.priority_mask(**dkw, backend="triton", validate=False)  # noqa: E731
        bkw = with_block_size(kw, RUN_BLOCK) if not block_size else kw
        bdkw = dict(bkw, seed=dkw["seed"], seq_offset=dkw["seq_offset"])
        blocks_fn = lambda: dm.priority_mask(**bdkw, backend="triton", validate=False)  # noqa: E731
        # one bit-equality check per size against the reference on the same device
        checks = [(label, kw, triton_fn)]
        if any(p.startswith("triton_blocks") for p in providers) and not block_size:
            checks.append((f"{label} blocks of {RUN_BLOCK}", bkw, blocks_fn))
        for name, ckw, fn in checks if T <= (1 << 24) else ():
            try:
                assert_same(dm.priority_mask(**ckw, backend="ref", validate=False), fn(),
                            f"T={T}: triton vs ref on {dev} ({name})")
                record.setdefault("equal_to_ref", {})[name] = True
            except AssertionError as e:  # keep timing; the table reports it
                record.setdefault("equal_to_ref", {})[name] = str(e)[:500]
                log(f"T={name}: MISMATCH {e}")
        for prov in providers:
            left = budget.left()
            why = None
            if prov == "ref" and T > (1 << 24):
                why = "eager reference above 16M tokens does not fit the budget"
            elif prov == "compiled" and left < (60 if DRY else 120):
                why = f"{left:.0f} s left: not enough to compile"
            elif left < 15:
                why = "time budget spent"
            elif prov in ("triton_graph", "triton_blocks_graph") and dev != "cuda":
                why = "needs CUDA"
            if why:
                skipped.append({"T": T, "provider": prov, "why": why})
                continue
            t0 = time.monotonic()
            try:
                if prov == "copy":
                    n = (nbytes["read"] + nbytes["write"]) // 2
                    src = torch.ones(n, dtype=torch.uint8, device=dev)
                    dst = torch.empty_like(src)
                    fn = lambda: dst.copy_(src)  # noqa: E731
                elif prov == "triton":
                    fn = triton_fn
                elif prov == "triton_out":
                    buf = dm.empty_masked_batch(kw["input_ids"], cu_seqlens=kw["cu_seqlens"],
                                                block_size=kw.get("block_size"), complementary=True)
                    fn = lambda: dm.priority_mask(**dkw, backend="triton", validate=False, out=buf)  # noqa: E731
                elif prov == "triton_plan":  # arguments checked once (dm.MaskPlan), then only the kernel
                    fn = dm.MaskPlan(**dkw, backend="triton", validate=False).run
                elif prov == "triton_graph":
                    fn = capture_graph(triton_fn)[0]
                elif prov == "triton_blocks":
                    fn = blocks_fn
                elif prov == "triton_blocks_graph":
                    fn = capture_graph(blocks_fn)[0]
                elif prov == "ref":
                    fn = lambda: dm.priority_mask(**kw, backend="ref", validate=False)  # noqa: E731
                elif prov == "compiled":
                    torch._dynamo.reset()
                    compiled = torch.compile(priority_mask_ref, dynamic=False)
                    args = op_args(kw, "bernoulli", None)
                    fn = lambda: compiled(*args)  # noqa: E731
                    fn()  # compile outside the timing
                else:  # dfactory
                    g = torch.Generator(device=dev).manual_seed(0)
                    fn = lambda: C.dfactory_mask(kw["input_ids"], kw["sigma"], kw["prompt_lens"], kw["mask_token_id"],  # noqa: E731
                                                 generator=g)
                row = {"T": kw["input_ids"].numel(), "size": label, "provider": prov, **bench(fn),
                       **(C.essential_bytes(bkw) if prov.startswith("triton_blocks") else nbytes)}
                row["setup_s"] = round(time.monotonic() - t0, 1)
                rows.append(row)
                log(f"T={label:>4} {prov:<12} {row['median_ms']:9.3f} ms")
            except Exception as e:  # noqa: BLE001 - one provider failing must not lose the others
                skipped.append({"T": T, "provider": prov, "why": f"{type(e).__name__}: {e}"[:500]})
                log(f"T={label:>4} {prov:<12} FAILED {type(e).__name__}: {str(e)[:200]}")
            finally:
                fn = None
                if dev == "cuda":
                    torch.cuda.empty_cache()
        save()
        del kw, dkw, bkw, bdkw
    _ratios(rows)
    return rows


def phase_variants(dev: str, budget: Budget, T: int) -> list:
    """Launch-setting variants of the Triton kernel at one size: data for tuning, not a target.
    σ per sequence, then σ per block of 32 (the run kernel: positions per step and warps, i.e.
    positions per thread, and blocks per program)."""
    from bench_priority_mask import with_block_size
    from dllm_masks.triton_kernels import priority_mask as tk

    bench = _timer(dev)
    kw = C.workload(T, device=dev)
    out = []
    K = RUN_BLOCK
    for bs, st in ((None, tk.launch_settings(0)), (None, tk.LaunchSettings(512, 4096, 4)),
                   (None, tk.LaunchSettings(256, 2048, 2)), (None, tk.LaunchSettings(2048, 8192, 8)),
                   (None, tk.LaunchSettings(1024, 4096, 8, stats_warps=4)), (None, tk.LaunchSettings(1024, 2048, 8)),
                   (K, tk.launch_settings(K)), (K, tk.LaunchSettings(512, K, 16, blocks_per_program=32)),
                   (K, tk.LaunchSettings(512, K, 8, blocks_per_program=32)),
                   (K, tk.LaunchSettings(1024, K, 8, blocks_per_program=32)),
                   (K, tk.LaunchSettings(256, K, 8, blocks_per_program=128))):
        if budget.left() < 20:
            break
        vkw = with_block_size(kw, bs)
        dkw = dict(vkw, seed=torch.tensor(kw["seed"], device=dev), seq_offset=torch.tensor(0, device=dev))
        args = tuple(dm.ops.normalize(**dkw, validate=False).args)
        fn = lambda: tk.priority_mask_triton(*args, settings=st)  # noqa: E731
        fn()
        out.append({"T": kw["input_ids"].numel(), "block_size": bs, **st._asdict(), **bench(fn)})
        log(f"variant {st}: {out[-1]['median_ms']:.3f} ms")
    return out


def _ratios(rows: list) -> None:
    for r in rows:
        same = {x["provider"]: x for x in rows if x["T"] == r["T"]}
        nbytes = r["read"] + r["write"]
        r["GBps"] = nbytes / (r["median_ms"] * 1e-3) / 1e9
        r["ns_per_token"] = 1e6 * r["median_ms"] / r["T"]
        for base in ("copy", "ref", "compiled", "dfactory"):
            r[f"x_{base}"] = (same[base]["median_ms"] / r["median_ms"]) if base in same else None


def _targets(rows: list) -> dict:
    def get(T, p):
        return next((r for r in rows if r["T"] == T and r["provider"] == p), None)

    res = {}
    t16, t1 = get(1 << 24, "triton"), get(1 << 20, "triton")

    def verdict(row, key, cmp, bound):
        if row is None or row.get(key) is None:
            return {"value": None, "bound": bound, "pass": None}
        v = row[key]
        return {"value": round(v, 3), "bound": bound, "pass": bool(cmp(v, bound))}

    res["16M fraction of copy bandwidth"] = verdict(t16, "x_copy", lambda v, b: v >= b, 0.75)
    res["16M speedup vs eager ref"] = verdict(t16, "x_ref", lambda v, b: v >= b, 20.0)
    res["16M speedup vs compiled ref"] = verdict(t16, "x_compiled", lambda v, b: v >= b, 3.0)
    floor1 = None if t1 is None or t1.get("x_copy") is None else {"x_floor": 1.0 / t1["x_copy"]}
    res["1M time / copy floor"] = verdict(floor1, "x_floor", lambda v, b: v <= b, 2.0)
    g1 = get(1 << 20, "triton_graph")
    g1f = None if g1 is None or g1.get("x_copy") is None else {"x_floor": 1.0 / g1["x_copy"]}
    res["1M time / copy floor (graph replay)"] = verdict(g1f, "x_floor", lambda v, b: v <= b, 2.0)
    # σ per block of 32 (the run kernel), against the same copy floor and references (σ per sequence)
    b16 = get(1 << 24, "triton_blocks")
    res[f"16M per block of {RUN_BLOCK}: fraction of copy bandwidth"] = verdict(b16, "x_copy", lambda v, b: v >= b, 0.75)
    res[f"16M per block of {RUN_BLOCK}: speedup vs eager ref"] = verdict(b16, "x_ref", lambda v, b: v >= b, 20.0)
    return res


def table(record: dict) -> str:
    lines = [f"{'T':>5} {'provider':<13} {'median ms':>10} {'GB/s':>8} {'x copy':>7} {'vs ref':>7} {'vs comp':>8} "
             f"{'vs dfac':>8}", "-" * 72]
    f = lambda v, fmt: (fmt % v) if v is not None else "-"  # noqa: E731
    for r in record.get("results", []):
        lines.append(f"{r['size']:>5} {r['provider']:<13} {r['median_ms']:>10.3f} {r['GBps']:>8.1f} "
                     f"{f(r['x_copy'], '%.2f'):>7} {f(r['x_ref'], '%.1fx'):>7} {f(r['x_compiled'], '%.1fx'):>8} "
                     f"{f(r['x_dfactory'], '%.1fx'):>8}")
    for v in record.get("variants", []):
        lines.append(f"variant K={v.get('block_size') or '-'} tile={v['tile']} chunk={v['chunk']} "
                     f"warps={v['num_warps']}/{v['stats_warps']} blocks/program={v.get('blocks_per_program', 0)}: "
                     f"{v['median_ms']:.3f} ms at T={v['T']}")
    for s in record.get("skipped", []):
        lines.append(f"skipped T={s['T']} {s['provider']}: {s['why']}")
    lines.append(f"targets ({TARGETS}):")
    for k, v in record.get("targets", {}).items():
        state = "not measured" if v["pass"] is None else ("PASS" if v["pass"] else "FAIL")
        lines.append(f"  {k}: {v['value']} (bound {v['bound']}) {state}")
    env = record.get("env", {})
    lines.append(f"PTX float64 fma-free, div.rn: {env.get('ptx_ok')}")
    for k, v in record.get("equal_to_ref", {}).items():
        lines.append(f"T={k}: triton {'equals' if v is True else 'DIFFERS FROM'} the reference on the device"
                     + ("" if v is True else f": {v}"))
    for k, v in record.get("graph", {}).items():
        lines.append(f"graph {k}: {'ok' if v['ok'] else 'FAILED ' + str(v['error'])[:200]}")
    pt = record.get("pytest")
    if pt:
        lines.append(f"pytest rc={pt['rc']}: {pt['summary']}")
    if record.get("dry_run"):
        lines.append("DRY RUN on the CPU (Triton interpreter, tiny sizes, host timers): no GPU figure was measured.")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="CPU, Triton interpreter, tiny sizes (checks the script)")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ROOT / "out" / "gpu_check")))
    ap.add_argument("--sizes", default=None, help="comma list of 1M,4M,16M,64M (dry run: token counts)")
    ap.add_argument("--providers", default=",".join(PROVIDERS))
    ap.add_argument("--budget", type=float, default=450.0, help="seconds for the whole run")
    ap.add_argument("--pytest-cap", type=float, default=200.0, help="seconds at most for the test phase")
    ap.add_argument("--skip", default="", help="comma list of phases to skip: graph,pytest,timings,variants")
    ap.add_argument("--block-size", type=int, default=None, help="timings with one σ per block of this many positions")
    args = ap.parse_args(argv)
    budget = Budget(args.budget)
    dev = "cpu" if args.dry_run else "cuda"
    if dev == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device (use --dry-run on a machine without a GPU)", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    if args.dry_run:
        sizes = [(s, int(s)) for s in (args.sizes or "4096,16384").split(",")]
    else:
        sizes = [(s, SIZES[s]) for s in (args.sizes or "16M,1M,4M,64M").split(",")]
    providers = [p for p in args.providers.split(",") if p]
    for p in providers:
        if p not in PROVIDERS:
            raise SystemExit(f"--providers: unknown provider {p!r} (choose from {', '.join(PROVIDERS)})")
    skip = set(filter(None, args.skip.split(",")))
    record = {"bench": "priority_mask gpu_check", "dry_run": args.dry_run,
              "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
              "commit": os.environ.get("DLLM_MASKS_COMMIT") or C.git_commit(), "device": dev,
              "config": {"seq_len": C.SEQ_LEN, "prio_rate": 0.25, "sigma": [0.3, 0.8], "weight": 2.0,
                         "complementary": True, "ids": "int64", "loss_weight": None, "sampling": "bernoulli",
                         "validate": False, "budget_s": args.budget, "block_size": args.block_size},
              "targets_spec": TARGETS}
    path = args.out / "gpu_check.json"

    def save():
        path.write_text(json.dumps(record, indent=1, default=str) + "\n")

    phases = [("env", lambda: phase_env(dev, args.out)),
              ("graph", lambda: phase_graph(dev)),
              ("pytest", lambda: phase_pytest(dev, args.out, budget, args.pytest_cap)),
              ("timings", lambda: phase_timings(dev, sizes, providers, budget, record, save, args.block_size)),
              ("variants", lambda: phase_variants(dev, budget, sizes[0][1]))]
    failed = False
    for name, run in phases:
        if name in skip:
            continue
        try:
            result = run()
            if name != "timings":
                record[name] = result
        except Exception as e:  # noqa: BLE001 - report the phase and go on with the next
            failed = True
            record[name] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-4000:]}
            log(f"{name}: FAILED {type(e).__name__}: {e}")
        save()
    record["targets"] = _targets(record.get("results", []))
    record["seconds"] = round(args.budget - budget.left(), 1)
    save()
    print(table(record))
    print(f"results: {path}")
    ok = (not failed and record.get("env", {}).get("ptx_ok", True)
          and all(v.get("ok") for v in record.get("graph", {}).values())
          and record.get("pytest", {}).get("rc", 0) == 0
          and all(v is True for v in record.get("equal_to_ref", {}).values()))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
