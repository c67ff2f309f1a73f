"""Static GPU evidence for the float32 importance-weights Triton kernel, without a GPU, next to the
boolean kernel (benchmarks/gpu_static.py, whose PTX readers and traffic model this reuses).

    .venv/bin/python benchmarks/gpu_static_weights.py            # every specialization, sm_80 and sm_90
    .venv/bin/python benchmarks/gpu_static_weights.py --quick    # a few (tests/test_gpu_static_weights.py)
    .venv/bin/python benchmarks/gpu_static_weights.py --json benchmarks/results/gpu_static_weights.json

Resources: it compiles the weights kernel of ``triton_kernels/importance.py`` to cubin for sm_80
and sm_90 with Triton's ptxas and reports registers per thread, spill stores / loads and shared
memory of every specialization a user can reach: Bernoulli and exact; per sequence and per block
at one block size of each launch-settings class (K = 32, 100, 200, 500, 1000: tiles of 64 … 1024
positions; longer blocks launch the K = 1000 settings); with and without ``maskable``; priority
and prompt lengths given, both views, "token" loss weights, int64 ids, and each of those four
options turned off alone (per sequence and per block of 32). ``--quick``: both archs, per
sequence and per block of 32 (and K = 200, exact), the rest at their defaults. Exits non-zero if
any specialization spills.

Traffic: for the weights kernel with the defaults above (per sequence and per block of 32;
Bernoulli and exact; sm_90) it reads the global memory bytes per token of every loop over a
segment's tokens from the PTX as gpu_static.py does (bytes per thread of the loop's
``ld/st.global`` × threads / tokens per iteration). The loops run a data-dependent number of
times, so the total is given for the passes each case takes:

* pass 1 (statistics and exponent histogram) and the write pass always;
* 0 to 3 refinement passes (the clip boundary inside an occupied exponent bucket: one per radix
  level it has to descend);
* exact sampling, three or more levels: one pass over the line (plus one per gap token, almost
  never); at most two levels: the boolean op's radix select, about ceil(log16 L) + 1 passes.

It is a MODEL, not a measurement (see gpu_static.py): in particular a loop whose loads the
compiler replicates across threads (the one-hot histogram passes: every thread reads the tile's
weights for its bins) counts every replicated load, although those come from the L1 cache.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpu_static  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

_WORKER = r"""
import json, os, sys, tempfile, subprocess, torch
assert os.environ.get("TRITON_INTERPRET", "0") != "1"
from dllm_masks.triton_kernels import importance as tw


def ptxas_for(arch):
    try:  # Triton >= 3.7 picks a ptxas per architecture
        from triton.backends.nvidia.compiler import get_ptxas
        return get_ptxas(arch).path
    except (ImportError, TypeError):
        from triton import knobs
        return knobs.nvidia.ptxas.path


out = []
for spec in json.loads(sys.argv[1]):
    ck = tw.compile_weights_specialization(spec["arch"], exact=spec["exact"], block_size=spec["block_size"],
                                           complementary=spec["complementary"], loss_weight=spec["loss_weight"],
                                           ids_dtype=getattr(torch, spec["ids"]), has_maskable=spec["maskable"],
                                           has_prompt=spec["prompt"])
    st = tw.weights_launch_settings(spec["block_size"], spec["exact"])
    gpu = f"sm_{spec['arch']}a" if spec["arch"] == 90 else f"sm_{spec['arch']}"
    with tempfile.TemporaryDirectory() as d:
        with open(os.path.join(d, "k.ptx"), "w") as f:
            f.write(ck.asm["ptx"])
        r = subprocess.run([ptxas_for(spec["arch"]), "-v", f"--gpu-name={gpu}", os.path.join(d, "k.ptx"), "-o",
                            os.path.join(d, "k.cubin")], capture_output=True, text=True)
    out.append(dict(spec, ptx=ck.asm["ptx"], ptxas=r.stdout + r.stderr, ptxas_rc=r.returncode,
                    shared=ck.metadata.shared, num_warps=ck.metadata.num_warps, tile=st.tile, hist=st.hist))
json.dump(out, sys.stdout)
"""

DEFAULTS = dict(complementary=True, loss_weight=True, ids="int64", maskable=False, prompt=True)
BLOCK_CLASSES = (32, 100, 200, 500, 1000)  # one block size per launch-settings class (tiles 64 … 1024)
OPTIONS_OFF = (dict(complementary=False), dict(loss_weight=False), dict(ids="int32"), dict(prompt=False))


def specializations(quick: bool) -> list:
    """Options of every reachable specialization (``quick``: a covering few); the traffic
    model's four (sm_90, defaults, per sequence and per block of 32) come first."""
    model = [dict(DEFAULTS, arch=90, exact=e, block_size=K) for K in (0, gpu_static.BLOCK) for e in (False, True)]
    if quick:
        return model + [dict(DEFAULTS, arch=80, exact=e, block_size=K) for K in (0, gpu_static.BLOCK)
                        for e in (False, True)] + [dict(DEFAULTS, arch=a, exact=True, block_size=200) for a in (80, 90)]
    specs = list(model)
    for arch in (80, 90):
        for exact in (False, True):
            for K in (0,) + BLOCK_CLASSES:
                for mk in (False, True):
                    specs.append(dict(DEFAULTS, arch=arch, exact=exact, block_size=K, maskable=mk))
            for K in (0, gpu_static.BLOCK):
                for off in OPTIONS_OFF:
                    specs.append(dict(DEFAULTS, arch=arch, exact=exact, block_size=K, **off))
    seen, out = set(), []
    for sp in specs:
        key = json.dumps(sp, sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append(sp)
    return out


def _label(r: dict) -> str:
    off = [k for k, v in DEFAULTS.items() if r[k] != v]
    return (f"sm_{r['arch']} {'sequence' if r['block_size'] == 0 else 'K=' + str(r['block_size']):<8} "
            f"{'exact' if r['exact'] else 'bernoulli':<9} " + (" ".join(f"{k}={r[k]}" for k in off) or "defaults"))


def loop_bytes(ptx: str) -> list:
    """(first line, bytes per thread loaded, stored) of every innermost loop with global memory ops, in PTX order."""
    ops = gpu_static.memory_ops(ptx)
    lps = gpu_static.loops(ptx)
    per = {}
    for line, kind, nbytes in ops:
        inner = [lp for lp in lps if lp[0] <= line <= lp[1]]
        if inner:
            lp = min(inner, key=lambda x: x[1] - x[0])
            ld, st = per.get(lp, (0, 0))
            per[lp] = (ld + (nbytes if kind == "ld" else 0), st + (nbytes if kind == "st" else 0))
    return [(lp[0], ld, st) for lp, (ld, st) in sorted(per.items())]


def model(rec: dict) -> dict:
    """Bytes per token of each pass of the weights kernel on one segment of the benchmark workload."""
    threads = 32 * rec["num_warps"]
    L = gpu_static.SEQ_LEN if rec["block_size"] == 0 else rec["block_size"]
    lb = loop_bytes(rec["ptx"])
    hist_loops = [b for b in lb if b[2] == 0][:2]  # pass 1, then the refinement pass
    write = [b for b in lb if b[2] > 0]
    assert len(hist_loops) == 2 and len(write) == 1, lb
    per_hist = [(ld * threads) / rec["hist"] for _, ld, _ in hist_loops]
    w = write[0]
    out = {"pass1": per_hist[0], "refinement_pass": per_hist[1], "write": (w[1] + w[2]) * threads / rec["tile"]}
    if rec["exact"]:
        others = [b for b in lb if b[2] == 0][2:]
        # the Philox-tile passes of the exact mode, bytes per token each (the largest: a conservative figure)
        out["exact_pass"] = max(ld * threads / rec["tile"] for _, ld, _ in others)
        out["exact_passes_3plus"] = 1
        out["exact_passes_2level"] = math.ceil(math.log(max(L, 2), 16)) + 1
    out["total_no_refinement"] = out["pass1"] + out["write"] + (out.get("exact_pass", 0) * out.get("exact_passes_3plus", 0))
    out["total_3_refinements"] = out["total_no_refinement"] + 3 * out["refinement_pass"]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a few specializations (the test)")
    ap.add_argument("--jobs", type=int, default=2, help="compiling processes")
    ap.add_argument("--json", type=Path, default=None, help="write the report as JSON here")
    args = ap.parse_args(argv)
    try:
        from triton.backends.compiler import GPUTarget  # noqa: F401
    except ImportError as e:
        print(f"no Triton with an NVIDIA backend here ({e}); nothing to compile")
        return 0
    compiled = gpu_static.compile_all(specializations(args.quick), args.jobs, worker=_WORKER)
    kernels = []
    print("float32 weights kernel compiled with Triton's ptxas (no GPU): resources per specialization")
    print(f"{'specialization':<62} {'warps':>5} {'regs':>5} {'spill st/ld':>11} {'smem':>6}")
    for rec in compiled:
        use = gpu_static.ptxas_usage(rec["ptxas"])
        row = dict({k: v for k, v in rec.items() if k not in ("ptx", "ptxas")}, **use)
        kernels.append(row)
        print(f"{_label(rec):<62} {rec['num_warps']:>5} {use['registers']!s:>5} "
              f"{use['spill_stores']!s:>5}/{use['spill_loads']!s:<5} {rec['shared']:>6}")
    bool_specs = [dict(kernel=k, arch=90, exact=e, block_size=K, complementary=True, loss_weight=True, ids="int64")
                  for K in (0, gpu_static.BLOCK) for e in (False, True)
                  for k in (("stats", "mask") if K == 0 else ("mask",))]
    bool_rep = gpu_static.report(gpu_static.compile_all(bool_specs, 1))
    rows = []
    print()
    print("float32 weights kernel vs boolean kernel, sm_90, both views, 'token' loss weights, int64 ids, prompts")
    print("MODEL (bytes per token read from the PTX; not a measurement)")
    for rec in compiled[:4]:
        use = gpu_static.ptxas_usage(rec["ptxas"])
        m = model(rec)
        b = next(x for x in bool_rep["roofline_model"] if x["block_size"] == rec["block_size"]
                 and x["exact"] == rec["exact"] and x["T"] == "16M")["bytes_per_token"]["total"]
        row = dict(exact=rec["exact"], block_size=rec["block_size"], registers=use["registers"],
                   spill_stores=use["spill_stores"], spill_loads=use["spill_loads"], shared=rec["shared"],
                   num_warps=rec["num_warps"], bytes_per_token=m, bool_bytes_per_token=b)
        rows.append(row)
        print(f"{'block 32' if rec['block_size'] else 'sequence':<9} {'exact' if rec['exact'] else 'bernoulli':<9} "
              f"regs {use['registers']} spills {use['spill_stores']}/{use['spill_loads']} smem {rec['shared']}: "
              + ", ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}" for k, v in m.items())
              + f" | bool total {b:.1f} -> float/bool {m['total_no_refinement'] / b:.2f}x .. "
              f"{m['total_3_refinements'] / b:.2f}x")
    spills = [k for k in kernels if k["ptxas_rc"] != 0 or k["spill_stores"] is None
              or k["spill_stores"] + k["spill_loads"] > 0]
    print()
    print(f"spills: {len(spills)} of {len(kernels)} specialization(s)"
          + ("" if not spills else ": " + ", ".join(_label(k) for k in spills)))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"kernels": kernels, "model": rows, "spills": spills}, indent=1) + "\n")
    return 1 if spills else 0


if __name__ == "__main__":
    sys.exit(main())
