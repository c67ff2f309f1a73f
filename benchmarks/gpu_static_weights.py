"""Static GPU evidence for the float32 importance-weights Triton kernel, without a GPU, next to the
boolean kernel (benchmarks/gpu_static.py, whose PTX readers and traffic model this reuses).

    .venv/bin/python benchmarks/gpu_static_weights.py [--json benchmarks/results/gpu_static_weights.json]

For the weights kernel of ``triton_kernels/importance.py`` (priority and prompt lengths given,
both views, "token" loss weights, int64 ids; per sequence and per block of 32; Bernoulli and
exact) it compiles for sm_90 with Triton's ptxas and reports registers, spills, shared memory,
and the global memory bytes per token of every loop over a segment's tokens, read from the PTX
as gpu_static.py does (bytes per thread of the loop's ``ld/st.global`` × threads / tokens per
iteration). The loops run a data-dependent number of times, so the total is given for the passes
each case takes:

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
import json, os, sys, tempfile, subprocess
assert os.environ.get("TRITON_INTERPRET", "0") != "1"
from dllm_masks.triton_kernels import importance as tw
try:  # Triton >= 3.7 picks a ptxas per architecture
    from triton.backends.nvidia.compiler import get_ptxas
    ptxas = get_ptxas(90).path
except (ImportError, TypeError):
    from triton import knobs
    ptxas = knobs.nvidia.ptxas.path
out = []
for spec in json.loads(sys.argv[1]):
    ck = tw.compile_weights_specialization(90, exact=spec["exact"], block_size=spec["block_size"])
    st = tw.weights_launch_settings(spec["block_size"])
    with tempfile.TemporaryDirectory() as d:
        with open(os.path.join(d, "k.ptx"), "w") as f:
            f.write(ck.asm["ptx"])
        r = subprocess.run([ptxas, "-v", "--gpu-name=sm_90a", os.path.join(d, "k.ptx"), "-o", os.path.join(d, "k.cubin")],
                           capture_output=True, text=True)
    out.append(dict(spec, ptx=ck.asm["ptx"], ptxas=r.stdout + r.stderr, shared=ck.metadata.shared,
                    num_warps=ck.metadata.num_warps, tile=st.tile, hist=st.hist))
json.dump(out, sys.stdout)
"""


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
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    try:
        from triton.backends.compiler import GPUTarget  # noqa: F401
    except ImportError as e:
        print(f"no Triton with an NVIDIA backend here ({e}); nothing to compile")
        return 0
    specs = [dict(exact=e, block_size=K) for K in (0, gpu_static.BLOCK) for e in (False, True)]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, "-c", _WORKER, json.dumps(specs)], cwd=ROOT, env=env, capture_output=True,
                       text=True)
    if r.returncode != 0:
        raise RuntimeError(r.stderr[-4000:])
    weights = json.loads(r.stdout)
    bool_specs = [dict(kernel=k, arch=90, exact=e, block_size=K, complementary=True, loss_weight=True, ids="int64")
                  for K in (0, gpu_static.BLOCK) for e in (False, True)
                  for k in (("stats", "mask") if K == 0 else ("mask",))]
    bool_rep = gpu_static.report(gpu_static.compile_all(bool_specs, 1))
    rows = []
    print("float32 weights kernel vs boolean kernel, sm_90, both views, 'token' loss weights, int64 ids, prompts")
    print("MODEL (bytes per token read from the PTX; not a measurement)")
    for rec in weights:
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
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
