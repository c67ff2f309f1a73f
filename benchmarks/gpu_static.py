"""Static GPU evidence for the Triton ``priority_mask`` kernels, without a GPU.

    .venv/bin/python benchmarks/gpu_static.py            # every specialization, sm_80 and sm_90
    .venv/bin/python benchmarks/gpu_static.py --quick    # a few (tests/test_gpu_static.py)
    .venv/bin/python benchmarks/gpu_static.py --json benchmarks/results/gpu_static.json

For every kernel specialization a user can reach (per sequence / per block of 32, Bernoulli /
exact, with and without the complement and loss weights, int32 / int64 ids; priority and prompt
lengths given, as in training) it compiles the kernels that call launches to cubin for sm_80 and
sm_90 with the ptxas that ships inside Triton (``kernels_launched``: blocks of up to 256
positions launch the run kernel ``blocks``, also compiled at K = 1, 3, 33 and 256 for their
resources; blocks of up to a chunk the mask kernel alone, one program per block, here K = 512;
blocks longer than a chunk (4096 positions), here 8192, the stats and mask kernels), and reports:

* registers per thread, spill stores / loads (``ptxas -v``), static shared memory (Triton's
  allocation and ptxas' count) and the theoretical occupancy those allow (warps resident per SM
  over 64, from the per-SM limits of sm_80 / sm_90);
* global memory traffic read from the PTX: every ``ld.global`` / ``st.global`` with its width,
  grouped by the loop it sits in (loops found from backward branches). Loops that walk a
  segment's tiles (the write loop, counting and selection passes) cost per token; the binary
  search over the segment table costs ceil(log2 S) iterations per program; everything else costs
  once per program. The run kernel has no loop over a segment's tiles (a step holds whole
  blocks), so its traffic is read from Triton's GPU IR instead, where every load and store has
  its tensor shape: [rows, groups, 4] tiles move their bytes once per token, [rows] vectors once
  per block, scalars once per step;
* a roofline: bytes per token × tokens / published DRAM bandwidth (H100 SXM 3.35 TB/s, H200
  4.8 TB/s) at 1M and 16M tokens. It is a MODEL, not a measurement: it assumes coalesced access
  (bytes moved by instructions = DRAM bytes), ignores launch latency, tail effects and the
  per-program latency of short programs, which is what limits the per-block kernel in practice.

Compilation runs in a subprocess with ``TRITON_INTERPRET`` unset (the interpreter replaces the
compiler in a process where it is set). Exits non-zero if any specialization spills.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parent.parent
SEQ_LEN = 2048  # the benchmark workload's sequences (benchmarks/common.py)
BLOCK = 32  # the block-diffusion recipe's block size
LARGE_BLOCK = 8192  # blocks longer than a chunk of the per-block launch settings (K > 4096)
MID_BLOCK = 512  # blocks past the run kernel's 256 and up to a chunk: one program per block
RUN_BLOCKS = (1, 3, 33, 256)  # further block sizes of the run kernel, compiled for their resources
BANDWIDTH = {"H100 SXM (3.35 TB/s)": 3.35e12, "H200 (4.8 TB/s)": 4.8e12}
SIZES = {"1M": 1 << 20, "16M": 1 << 24}
# Per-SM limits (CUDA occupancy calculator): registers, resident warps, resident blocks, shared memory.
SM_LIMITS = {80: dict(regs=65536, warps=64, blocks=32, smem=164 * 1024),
             90: dict(regs=65536, warps=64, blocks=32, smem=228 * 1024)}

_WORKER = r"""
import json, os, sys, tempfile, subprocess, torch
assert os.environ.get("TRITON_INTERPRET", "0") != "1"
from dllm_masks.triton_kernels import priority_mask as tk
import triton


def ptxas_for(arch):
    try:  # Triton >= 3.7 picks a ptxas per architecture
        from triton.backends.nvidia.compiler import get_ptxas
        return get_ptxas(arch).path
    except (ImportError, TypeError):
        from triton import knobs
        return knobs.nvidia.ptxas.path


out = []
for spec in json.loads(sys.argv[1]):
    ck = tk.compile_specialization(spec["kernel"], spec["arch"], exact=spec["exact"], block_size=spec["block_size"],
                                   complementary=spec["complementary"], loss_weight=spec["loss_weight"],
                                   ids_dtype=getattr(torch, spec["ids"]))
    ptx = ck.asm["ptx"]
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        r = subprocess.run([ptxas_for(spec["arch"]), "-v", f"--gpu-name=sm_{spec['arch']}a" if spec["arch"] == 90 else f"--gpu-name=sm_{spec['arch']}",
                            src, "-o", os.path.join(d, "k.cubin")], capture_output=True, text=True)
    st = tk.launch_settings(spec["block_size"])
    out.append(dict(spec, ptx=ptx, ttgir=ck.asm["ttgir"] if spec["kernel"] == "blocks" else "",
                    ptxas=r.stdout + r.stderr, ptxas_rc=r.returncode, shared=ck.metadata.shared,
                    num_warps=ck.metadata.num_warps, tile=st.tile, chunk=st.chunk,
                    blocks_per_program=st.blocks_per_program, cubin_bytes=len(ck.asm["cubin"])))
json.dump(out, sys.stdout)
"""


def specializations(quick: bool) -> list:
    """(kernel, arch, options) of every reachable specialization; ``quick``: a covering few."""
    specs = []
    if quick:
        base = dict(complementary=True, loss_weight=True, ids="int64")
        for kernel, arch, exact, K in (("mask", 90, False, 0), ("blocks", 90, False, BLOCK), ("mask", 80, False, 0),
                                       ("blocks", 90, True, BLOCK), ("stats", 90, False, 0),
                                       ("stats", 90, False, LARGE_BLOCK)):
            specs.append(dict(base, kernel=kernel, arch=arch, exact=exact, block_size=K))
        return specs
    for arch in (80, 90):
        for exact in (False, True):
            # Launch 1 runs per sequence and for blocks longer than a chunk (K > 1021) only.
            for K in (0, LARGE_BLOCK):
                specs.append(dict(kernel="stats", arch=arch, exact=exact, block_size=K, complementary=True,
                                  loss_weight=True, ids="int64"))
            for K in (LARGE_BLOCK, MID_BLOCK):
                specs.append(dict(kernel="mask", arch=arch, exact=exact, block_size=K, complementary=True,
                                  loss_weight=True, ids="int64"))
            for K in RUN_BLOCKS:
                specs.append(dict(kernel="blocks", arch=arch, exact=exact, block_size=K, complementary=True,
                                  loss_weight=True, ids="int64"))
        for kernel, K in (("mask", 0), ("blocks", BLOCK)):
            for exact in (False, True):
                for comp in (False, True):
                    for lw in (False, True):
                        for ids in ("int32", "int64"):
                            specs.append(dict(kernel=kernel, arch=arch, exact=exact, block_size=K, complementary=comp,
                                              loss_weight=lw, ids=ids))
    return specs


def compile_all(specs: list, jobs: int, worker: Optional[str] = None) -> list:
    """Compile ``specs`` in ``jobs`` subprocesses (TRITON_INTERPRET unset) running ``worker``
    (default: this module's); results in the order of ``specs``."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    parts = [specs[i::jobs] for i in range(jobs)]
    procs = [subprocess.Popen([sys.executable, "-c", worker or _WORKER, json.dumps(p)], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for p in parts if p]
    done = []
    for p in procs:
        out, err = p.communicate()
        if p.returncode != 0:
            raise RuntimeError(f"compiling failed:\n{err[-4000:]}")
        done.append(json.loads(out))
    return [done[i % jobs][i // jobs] for i in range(len(specs))]


# ---------------------------------------------------------------------------------------------
# Reading ptxas and PTX
# ---------------------------------------------------------------------------------------------
def ptxas_usage(text: str) -> dict:
    """Registers, spill bytes and shared memory from ``ptxas -v``."""
    regs = re.search(r"Used (\d+) registers", text)
    spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", text)
    smem = re.search(r"(\d+) bytes smem", text)
    stack = re.search(r"(\d+) bytes stack frame", text)
    return {"registers": int(regs.group(1)) if regs else None,
            "spill_stores": int(spill.group(1)) if spill else None,
            "spill_loads": int(spill.group(2)) if spill else None,
            "ptxas_smem": int(smem.group(1)) if smem else 0,
            "stack": int(stack.group(1)) if stack else 0}


def occupancy(arch: int, regs: int, warps: int, smem: int) -> dict:
    """Theoretical occupancy: resident blocks per SM under the register, warp, block and shared
    memory limits (registers allocated per warp in units of 256), and warps / 64."""
    lim = SM_LIMITS[arch]
    per_warp = math.ceil(max(regs, 1) * 32 / 256) * 256
    by_regs = (lim["regs"] // per_warp) // warps
    by_warps = lim["warps"] // warps
    by_smem = lim["smem"] // smem if smem else lim["blocks"]
    blocks = min(by_regs, by_warps, lim["blocks"], by_smem)
    limiter = min((("registers", by_regs), ("warps", by_warps), ("blocks per SM", lim["blocks"]),
                   ("shared memory", by_smem)), key=lambda x: x[1])[0]
    return {"blocks_per_sm": blocks, "warps_per_sm": blocks * warps, "occupancy": blocks * warps / lim["warps"],
            "limiter": limiter}


_MEM = re.compile(r"^(?:@!?%p\d+\s+)?(ld|st)\.global(?:\.[a-z0-9_]+)*?(?:\.v(\d))?\.([busf])(\d+)\s")
_LABEL = re.compile(r"^(\$L__BB\d+_\d+):")
_BRA = re.compile(r"\bbra(?:\.uni)?\s+(\$L__BB\d+_\d+);")


def memory_ops(ptx: str) -> list:
    """Global memory instructions of one kernel's PTX: (line, 'ld'/'st', bytes per thread)."""
    ops = []
    for i, line in enumerate(ptx.splitlines()):
        m = _MEM.match(line.strip())
        if m:
            ops.append((i, m.group(1), int(m.group(2) or 1) * int(m.group(4)) // 8))
    return ops


def loops(ptx: str) -> list:
    """(first line, last line) of every loop: a label and a later branch back to it."""
    where = {}
    found = []
    for i, line in enumerate(ptx.splitlines()):
        s = line.strip()
        m = _LABEL.match(s)
        if m:
            where[m.group(1)] = i
        b = _BRA.search(s)
        if b and b.group(1) in where and where[b.group(1)] < i:
            found.append((where[b.group(1)], i))
    return found


def loop_instructions_per_token(kernel: str, ptx: str, tile: int, threads: int) -> Optional[float]:
    """PTX instructions per token of the main per-token loop, each loop body counted once (the
    exact selection's data-dependent passes are not multiplied): the mask kernel's write loop (the
    innermost loop with stores) over its tile's positions per thread; the run kernel's step loop
    (the outermost loop) over its step's positions per thread. None for the stats kernel."""
    lines = [x.strip() for x in ptx.splitlines()]
    instr = [i for i, x in enumerate(lines) if x.endswith(";") and not x.startswith(("//", "."))]
    lps = loops(ptx)
    if kernel == "blocks" and lps:
        lp = max(lps, key=lambda x: x[1] - x[0])
    elif kernel == "mask":
        stores = [lp for lp in lps if any(lp[0] <= i <= lp[1] and lines[i].startswith(("st.global", "@"))
                                          and "st.global" in lines[i] for i in instr)]
        if not stores:
            return None
        lp = min(stores, key=lambda x: x[1] - x[0])
    else:
        return None
    return sum(1 for i in instr if lp[0] <= i <= lp[1]) * threads / tile


def classify(kernel: str, ptx: str) -> dict:
    """Bytes per thread of the kernel's global memory instructions by where they sit: loops over
    a segment's tiles (``write``: the loop that stores; ``count``: the first loop that only loads
    per-token bytes; ``other_tile``: further load-only loops, the exact selection's passes),
    ``search`` (the stats kernel's binary search: log2 S per program), ``partials`` (the mask
    kernel's sum of partial counts: only segments over several chunks) and ``once`` (per program)."""
    ops = memory_ops(ptx)
    lps = loops(ptx)
    out = {"write_ld": 0, "write_st": 0, "count": 0, "other_tile": 0, "search": 0, "partials": 0,
           "once_ld": 0, "once_st": 0, "loops": len(lps)}
    innermost = {}
    for (line, kind, nbytes) in ops:
        inner = [lp for lp in lps if lp[0] <= line <= lp[1]]
        innermost[line] = min(inner, key=lambda lp: lp[1] - lp[0]) if inner else None
    seen_count = False
    for lp in sorted(lps):
        mine = [(k, b) for (ln, k, b) in ops if innermost[ln] == lp]
        if not mine:
            continue
        if kernel == "stats" and len(mine) == 1 and mine[0] in (("ld", 4), ("ld", 8)):
            out["search"] += mine[0][1]
        elif kernel == "mask" and all(k == "ld" and b >= 8 for k, b in mine):
            out["partials"] += sum(b for _, b in mine)
        elif any(k == "st" for k, _ in mine):
            out["write_ld"] += sum(b for k, b in mine if k == "ld")
            out["write_st"] += sum(b for k, b in mine if k == "st")
        elif not seen_count:
            seen_count = True
            out["count"] += sum(b for _, b in mine)
        else:
            out["other_tile"] += sum(b for _, b in mine)
    for (ln, k, b) in ops:
        if innermost[ln] is None:
            out["once_" + k] += b
    return out


_TT_MEM = re.compile(r"\btt\.(load|store)\b.*:\s*(?:tensor<((?:\d+x)*)!tt\.ptr<(\w+)>|!tt\.ptr<(\w+)>)")
_BYTES = {"i1": 1, "i8": 1, "i16": 2, "i32": 4, "i64": 8, "f16": 2, "bf16": 2, "f32": 4, "f64": 8}


def ttgir_memory(ttgir: str) -> dict:
    """Global memory operations of the run kernel by the rank of their tensor, from Triton's GPU IR:
    bytes per element summed over ``tile`` (rank 3: one element per token position), ``row``
    (rank 1: one per block) and ``scalar`` operations, loads and stores apart. Every operation is
    counted, also one that reloads a value already loaded in another layout."""
    out = {"tile_ld": 0, "tile_st": 0, "row_ld": 0, "row_st": 0, "scalar_ld": 0, "scalar_st": 0}
    for line in ttgir.splitlines():
        m = _TT_MEM.search(line)
        if not m:
            continue
        kind = "ld" if m.group(1) == "load" else "st"
        if m.group(4):
            out["scalar_" + kind] += _BYTES[m.group(4)]
            continue
        rank = m.group(2).count("x")
        cls = {3: "tile", 1: "row"}.get(rank)
        if cls is None:
            raise ValueError(f"unexpected tensor rank {rank} in: {line.strip()[:200]}")
        out[f"{cls}_{kind}"] += _BYTES[m.group(3)]
    return out


# ---------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------
def run_traffic_model(blocks: dict, K: int, T: int) -> dict:
    """Modelled bytes per token of the run kernel (per-block σ, blocks of K ≤ 256) on the benchmark
    workload (2048-token sequences). Tile operations are masked to the block's positions, so each
    moves its element bytes once per token; row operations once per block (S / T per token);
    scalars once per step (steps per program × programs / T). The block table: ``repeat_interleave``
    writes 4 bytes per block (read back by a row load, counted there) and a few [B]-sized torch
    ops, about 40 bytes per sequence."""
    B = T // SEQ_LEN
    S = B * math.ceil(SEQ_LEN / K)
    c = blocks["classes"]
    steps = blocks["blocks_per_program"] * blocks["chunk"] // blocks["tile"]
    grid = math.ceil(S / blocks["blocks_per_program"])
    model = {"write_loop": c["tile_ld"] + c["tile_st"],
             "count_and_select_loops": 0.0,
             "per_block": (c["row_ld"] + c["row_st"]) * S / T,
             "per_program": (c["scalar_ld"] + c["scalar_st"]) * steps * grid / T,
             "block_table": (4.0 * S + 40.0 * B) / T}
    model["total"] = sum(model.values())
    return model


def traffic_model(mask: dict, stats: Optional[dict], K: int, exact: bool, T: int) -> dict:
    """Modelled bytes per token of one call on the benchmark workload (2048-token sequences, σ per
    sequence or per block of K).

    Tile loops: bytes per thread × threads / tile positions. The count loop runs once, and with
    ``exact`` once more per radix pass (2-bit digits until one key is left: about
    ceil(log2(L) / 2) passes, L the segment length) and for the final cut. Per program: bytes
    outside loops (scalars: one thread's count is the program's) and the binary search
    (ceil(log2 S) steps), over the tokens per program (grid T / chunk + S). Per block, the torch
    ops that build the block table (about 48 bytes per segment). Both stats-kernel loops over
    tokens run only for segments longer than a chunk (none here). ``stats`` None: blocks of at
    most a chunk, launched as one program per segment without launch 1 (grid S)."""
    B = T // SEQ_LEN
    S = B if K == 0 else B * math.ceil(SEQ_LEN / K)
    grid = S if stats is None else T // mask["chunk"] + S
    L = SEQ_LEN if K == 0 else K
    c = mask["classes"]
    per_thread = 32 * mask["num_warps"] / mask["tile"]
    count_runs = 1 + ((math.ceil(math.log2(max(L, 2)) / 2) + 1) if exact else 0)
    model = {"write_loop": (c["write_ld"] + c["write_st"]) * per_thread,
             "count_and_select_loops": c["count"] * per_thread * count_runs}
    once = 0.0
    for k in (mask, stats) if stats is not None else (mask,):
        kc = k["classes"]
        once += kc["once_ld"] + kc["once_st"] + kc["search"] * math.ceil(math.log2(max(S, 2)))
    model["per_program"] = once * grid / T
    if K:
        model["block_table"] = 48.0 / K
    model["total"] = sum(model.values())
    return model


def report(results: list) -> dict:
    rows = []
    for r in results:
        use = ptxas_usage(r["ptxas"])
        smem = max(r["shared"], use["ptxas_smem"])
        occ = occupancy(r["arch"], use["registers"] or 0, r["num_warps"], smem)
        rows.append(dict({k: r[k] for k in ("kernel", "arch", "exact", "block_size", "complementary", "loss_weight",
                                            "ids", "num_warps", "tile", "chunk", "ptxas_rc")},
                         blocks_per_program=r.get("blocks_per_program", 0), **use, shared=r["shared"], **occ,
                         classes=ttgir_memory(r["ttgir"]) if r["kernel"] == "blocks" else classify(r["kernel"], r["ptx"]),
                         loop_instructions_per_token=loop_instructions_per_token(r["kernel"], r["ptx"], r["tile"],
                                                                                 32 * r["num_warps"])))
    models = []
    for m in (x for x in rows if x["kernel"] in ("mask", "blocks")):
        if m["block_size"] not in (0, BLOCK):
            continue  # other block sizes: resources only
        s = next((x for x in rows if x["kernel"] == "stats" and x["arch"] == m["arch"] and x["exact"] == m["exact"]
                  and x["block_size"] == m["block_size"]), None)
        if s is None and m["block_size"] == 0:
            continue
        for label, T in SIZES.items():
            if m["kernel"] == "blocks":
                tm = run_traffic_model(m, m["block_size"], T)
            else:
                tm = traffic_model(m, s, m["block_size"], m["exact"], T)
            models.append(dict({k: m[k] for k in ("kernel", "arch", "exact", "block_size", "complementary", "loss_weight",
                                              "ids")},
                               T=label, bytes_per_token=tm,
                               model_ms={gpu: 1e3 * tm["total"] * T / bw for gpu, bw in BANDWIDTH.items()}))
    return {"kernels": rows, "roofline_model": models,
            "spills": [r for r in rows if (r["spill_stores"] or 0) + (r["spill_loads"] or 0) > 0 or r["ptxas_rc"] != 0]}


def essential_bytes(complementary: bool, loss_weight: bool, ids: str) -> float:
    """What the op must move per token: ids, priority and (per view) noisy ids, mask, labels, weights."""
    e = 8 if ids == "int64" else 4
    return e + 1 + (2 if complementary else 1) * (e + 1 + 8 + (4 if loss_weight else 0))


def _sigma_per(K: int) -> str:
    return f"block {K}" if K else "sequence"


def text(rep: dict) -> str:
    lines = ["Triton priority_mask kernels compiled with Triton's ptxas (no GPU): resources per specialization",
             f"{'kernel':<6} {'sm':>3} {'sigma per':<9} {'sampling':<9} {'views':>5} {'lw':>3} {'ids':<5} {'warps':>5} "
             f"{'regs':>4} {'spill st/ld':>11} {'smem B':>7} {'occupancy':>9}  limiter"]
    for r in rep["kernels"]:
        lines.append(f"{r['kernel']:<6} {r['arch']:>3} {_sigma_per(r['block_size']):<9} "
                     f"{'exact' if r['exact'] else 'bernoulli':<9} {2 if r['complementary'] else 1:>5} "
                     f"{'y' if r['loss_weight'] else 'n':>3} {r['ids']:<5} {r['num_warps']:>5} {r['registers']!s:>4} "
                     f"{r['spill_stores']!s:>5}/{r['spill_loads']!s:<5} {max(r['shared'], r['ptxas_smem']):>7} "
                     f"{100 * r['occupancy']:>8.0f}%  {r['limiter']}")
    lines.append("")
    lines.append("Global memory instructions per tile iteration (bytes per thread, from the PTX) and per program")
    seen = set()
    for r in rep["kernels"]:
        key = (r["kernel"], r["exact"], r["block_size"], r["complementary"], r["loss_weight"], r["ids"])
        if r["arch"] != 90 or key in seen:
            continue
        seen.add(key)
        c = r["classes"]
        if r["kernel"] == "blocks":
            lines.append(f"  {r['kernel']:<6} {_sigma_per(r['block_size']):<9} "
                         f"{'exact' if r['exact'] else 'bernoulli':<9} views={2 if r['complementary'] else 1} "
                         f"lw={'y' if r['loss_weight'] else 'n'} {r['ids']:<5} step={r['tile']:>4} "
                         f"threads={32 * r['num_warps']:>3} blocks/program={r['blocks_per_program']}: "
                         f"per token ld {c['tile_ld']} B st {c['tile_st']} B, per block ld {c['row_ld']} B "
                         f"st {c['row_st']} B, per step ld {c['scalar_ld']} B st {c['scalar_st']} B (GPU IR); "
                         f"{r['loop_instructions_per_token']:.0f} PTX instructions per token in the step loop")
            continue
        lines.append(f"  {r['kernel']:<6} {_sigma_per(r['block_size']):<9} "
                     f"{'exact' if r['exact'] else 'bernoulli':<9} views={2 if r['complementary'] else 1} "
                     f"lw={'y' if r['loss_weight'] else 'n'} {r['ids']:<5} tile={r['tile']:>4} threads={32 * r['num_warps']:>3}: "
                     f"write loop ld {c['write_ld']} B st {c['write_st']} B, count loop {c['count']} B, "
                     f"selection loops {c['other_tile']} B, once ld {c['once_ld']} B st {c['once_st']} B, "
                     f"search {c['search']} B/step" + (
                         "" if r["loop_instructions_per_token"] is None else
                         f"; {r['loop_instructions_per_token']:.0f} PTX instructions per token in the write loop"))
    lines.append("")
    lines.append("ROOFLINE MODEL (not a measurement): bytes per token read from the code x tokens / published bandwidth")
    lines.append(f"{'sm':>3} {'sigma per':<9} {'sampling':<9} {'views':>5} {'lw':>3} {'ids':<5} {'T':>4} {'B/token':>8} "
                 f"{'essential':>9} " + " ".join(f"{g:>22}" for g in BANDWIDTH))
    for m in rep["roofline_model"]:
        if m["arch"] != 90:
            continue
        lines.append(f"{m['arch']:>3} {_sigma_per(m['block_size']):<9} "
                     f"{'exact' if m['exact'] else 'bernoulli':<9} {2 if m['complementary'] else 1:>5} "
                     f"{'y' if m['loss_weight'] else 'n':>3} {m['ids']:<5} {m['T']:>4} {m['bytes_per_token']['total']:>8.1f} "
                     f"{essential_bytes(m['complementary'], m['loss_weight'], m['ids']):>9.0f} "
                     + " ".join(f"{m['model_ms'][g]:>19.3f} ms" for g in BANDWIDTH))
    ratio = per_block_ratio(rep)
    if ratio:
        lines.append("")
        lines.append("per-block (K=32) / per-sequence modelled bytes per token, same options: "
                     + ", ".join(f"{k}: {v:.2f}x" for k, v in ratio.items()))
    lines.append("")
    lines.append(f"spills: {len(rep['spills'])} specialization(s)" + (
        "" if not rep["spills"] else ": " + ", ".join(f"{r['kernel']} sm{r['arch']} K{r['block_size']}" for r in rep["spills"])))
    return "\n".join(lines)


def per_block_ratio(rep: dict) -> dict:
    out = {}
    for m in rep["roofline_model"]:
        if m["block_size"] == 0 or m["arch"] != 90 or m["T"] != "16M":
            continue
        base = next((x for x in rep["roofline_model"] if x["block_size"] == 0 and x["T"] == m["T"] and x["arch"] == 90
                     and all(x[k] == m[k] for k in ("exact", "complementary", "loss_weight", "ids"))), None)
        if base:
            key = f"{'exact' if m['exact'] else 'bernoulli'} views={2 if m['complementary'] else 1} lw={'y' if m['loss_weight'] else 'n'} {m['ids']}"
            out[key] = m["bytes_per_token"]["total"] / base["bytes_per_token"]["total"]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a few specializations (the test)")
    ap.add_argument("--jobs", type=int, default=2, help="compiling processes")
    ap.add_argument("--json", type=Path, default=None, help="write the report as JSON here")
    args = ap.parse_args(argv)
    try:
        import triton  # noqa: F401
        from triton.backends.compiler import GPUTarget  # noqa: F401
    except ImportError as e:
        print(f"no Triton with an NVIDIA backend here ({e}); nothing to compile")
        return 0
    rep = report(compile_all(specializations(args.quick), args.jobs))
    print(text(rep))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rep, indent=1) + "\n")
    return 1 if rep["spills"] else 0


if __name__ == "__main__":
    sys.exit(main())
