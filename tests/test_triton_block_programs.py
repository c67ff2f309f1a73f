"""Per-block σ on the Triton path, both launches: runs of whole blocks per program (blocks of up to
``RUN_MAX_BLOCK`` positions, the default) and one program per block (larger blocks up to a chunk,
or any block under settings that ask for it). Every output stays bit-identical to the reference
(interpreter on CPU tensors; compiled on a GPU)."""
import math
import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings

triton = pytest.importorskip("triton")

import dllm_masks as dm  # noqa: E402
from dllm_masks.testing import AWKWARD, assert_same, packed_case, padded_cases, random_cases  # noqa: E402

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
DEVICE = "cpu" if INTERPRET else ("cuda" if torch.cuda.is_available() else None)
pytestmark = [pytest.mark.skipif(DEVICE is None, reason="needs TRITON_INTERPRET=1 (CPU) or a CUDA device"),
              pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning")]
OPTIONS = [dict(), dict(sampling="exact", complementary=True, loss_weight="token", weight=3.0),
           dict(complementary=True, loss_weight="sigma", weight=math.inf, dtype=torch.int32)]


def _tk():
    from dllm_masks.triton_kernels import priority_mask as tk

    return tk


def _check(kw, what="", st=None):
    """The Triton kernel (launch settings ``st``, default if None) equals the reference."""
    from dllm_masks.ops import normalize

    want = dm.priority_mask(**kw, backend="ref")
    if st is None:
        got = dm.priority_mask(**{k: (v.to(DEVICE) if isinstance(v, torch.Tensor) else v) for k, v in kw.items()},
                               backend="triton")
        assert_same(want, got, what)
        return
    call = normalize(**kw)
    args = [a.to(DEVICE) if isinstance(a, torch.Tensor) else a for a in call.args]
    noisy, masked, labels, lw, rates = _tk().priority_mask_triton(*args, settings=st)
    shape = want.noisy_ids.shape
    for name, a, b in (("noisy_ids", want.noisy_ids, noisy), ("masked", want.masked, masked),
                       ("labels", want.labels, labels), ("rates", want.rates, rates)):
        assert torch.equal(a.reshape(-1).cpu(), b.reshape(-1).cpu()), f"{what}: {name} {shape}"
    if want.loss_weight is not None:
        assert torch.equal(want.loss_weight.reshape(-1).cpu(), lw.cpu()), f"{what}: loss_weight"


def _runs(K, blocks, rows_per_step=1):
    """Run-kernel settings with ``blocks`` blocks per program, ``rows_per_step`` per step."""
    row = _tk().run_row_positions(K)
    return _tk().LaunchSettings(tile=row * rows_per_step, chunk=row, num_warps=1, blocks_per_program=blocks)


def _per_block(K):
    """The one-program-per-block settings (what blocks of up to 1021 got before runs)."""
    tile = max(64, triton.next_power_of_2(K + 3))
    return _tk().LaunchSettings(tile=tile, chunk=tile, num_warps=max(1, tile // 128))


@pytest.mark.parametrize("K", [1, 3, 4, 32, 33, 1021])
def test_awkward_lengths(K):
    """Runs of blocks for K <= 256, one program per block for K = 1021 (the default settings).

    Under the interpreter a step of a run costs about 0.2 s whatever its size, so the default
    settings (256-position steps: 64 blocks a step at K = 1) see sequences capped at 100 positions
    for K <= 4 and 300 above (1100 for the one-program-per-block K = 1021), and the full lengths
    (4097 included) run under the same kernel with 4096-position steps, one step per program.
    On a GPU every case runs the defaults."""
    tk = _tk()
    assert (tk.launch_settings(K).blocks_per_program > 0) == (K <= tk.RUN_MAX_BLOCK)
    wide = None
    cap = 100 if K <= 4 else 300 if K <= tk.RUN_MAX_BLOCK else 1100
    if not INTERPRET:
        cap = 1 << 20
    elif K <= tk.RUN_MAX_BLOCK:
        blocks = triton.next_power_of_2(-(-4096 // tk.run_row_positions(K)))
        wide = _runs(K, blocks, blocks)
    for lengths, why in AWKWARD:
        for opt in OPTIONS:
            kw = packed_case(lengths, seed=K + len(lengths), block_size=K, **opt)
            if wide is not None and max(lengths, default=0) > cap:
                _check(kw, f"K={K} {why} {opt} (4096-position steps)", st=wide)
            capped = [min(n, cap) for n in lengths]
            _check(packed_case(capped, seed=K + len(lengths), block_size=K, **opt), f"K={K} {why} {opt} {capped}")


@pytest.mark.parametrize("K", [3, 33])
def test_one_program_per_block_for_small_blocks(K):
    """The per-block launch that blocks over 256 positions use, forced on small blocks (one
    interpreted program per block, so sequences stay short; tests/test_priority_mask_triton.py
    draws more cases of this launch with tiny tiles and chunks)."""
    cap = 140 if K > 4 else 12
    for lengths, why in AWKWARD:
        lengths = [min(n, cap) for n in lengths]
        for opt in OPTIONS[1:]:
            _check(packed_case(lengths, seed=K + len(lengths), block_size=K, **opt), f"K={K} {why} {opt}",
                   st=_per_block(K))


@pytest.mark.parametrize("K", [1, 3, 32, 33, 256])
@pytest.mark.parametrize("blocks,rows", [(1, 1), (2, 1), (8, 2), (16, 16)], ids=["1x1", "2x1", "8x2", "16x16"])
def test_runs_of_any_shape(K, blocks, rows):
    """Runs of 1-16 blocks in steps of 1-16 rows: runs that cross sequences and empty sequences,
    idle rows in the last program, several steps per program (fewer positions for tiny blocks:
    one interpreted step per block at 1x1)."""
    lengths = [5, 0, 1, 31, 0, 0, 33, 100, 3] if K > 4 else [5, 0, 1, 3, 0, 0, 9, 2]
    for opt in OPTIONS[1:]:
        _check(packed_case(lengths, seed=K * blocks, block_size=K, **opt), f"K={K} {blocks}x{rows} {opt}",
               st=_runs(K, blocks, rows))


@settings(max_examples=20 if INTERPRET else 150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_cases(max_len=60, max_seqs=6))
def test_random_cases_small_runs(kw):
    """Drawn batches under runs of 4 blocks in steps of 2 (K >= 32) or 64 in steps of 32 (K <= 4)."""
    K = kw.get("block_size")
    st = None if not K else _runs(K, 4, 2) if K >= 32 else _runs(K, 64, 32)
    _check(kw, f"hypothesis K={K}", st=st)


@settings(max_examples=10 if INTERPRET else 100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(padded_cases())
def test_random_padded_batches(kw):
    _check(kw, "hypothesis padded")


class _NoLaunch:
    """Stands in for a kernel that must not be launched."""

    def __init__(self, why):
        self.why = why

    def __getitem__(self, grid):
        raise AssertionError(self.why)


def test_runs_launch_only_the_run_kernel(monkeypatch):
    tk = _tk()
    monkeypatch.setattr(tk, "_stats_kernel", _NoLaunch("a per-segment kernel ran for blocks that go in runs"))
    monkeypatch.setattr(tk, "_mask_kernel", _NoLaunch("a per-segment kernel ran for blocks that go in runs"))
    _check(packed_case([70, 5, 0, 33], seed=1, block_size=32, sampling="exact", complementary=True))
    with pytest.raises(AssertionError, match="per-segment kernel ran"):
        _check(packed_case([70, 5], seed=1, block_size=300))
    assert tk.kernels_launched(32) == ("blocks",) and tk.kernels_launched(300) == ("mask",)
    assert tk.kernels_launched(2048) == ("mask",)  # one program per block of up to a 4096-token chunk
    assert tk.kernels_launched(0) == tk.kernels_launched(8192) == ("stats", "mask")


def test_blocks_up_to_a_chunk_skip_launch_1(monkeypatch):
    tk = _tk()
    monkeypatch.setattr(tk, "_stats_kernel", _NoLaunch("launch 1 ran for blocks no longer than a chunk"))
    _check(packed_case([70, 5, 0, 33], seed=1, block_size=32, sampling="exact", complementary=True), st=_per_block(32))
    _check(packed_case([700, 5, 0, 33], seed=1, block_size=300, complementary=True))
    with pytest.raises(AssertionError, match="launch 1 ran"):  # per sequence still needs it
        _check(packed_case([70, 5], seed=1))


def test_default_runs_cover_1024_tokens():
    tk = _tk()
    for K in range(1, tk.RUN_MAX_BLOCK + 1):
        st = tk.launch_settings(K)
        assert st.blocks_per_program * K >= 1024 and st.chunk >= K + (3 if K % 4 else 0), (K, st)
        assert st.tile <= 2 * 32 * st.num_warps, (K, st)  # at most two positions per thread
        tk._run_shape(st, K)


def test_block_table():
    tk = _tk()
    cu = torch.tensor([0, 5, 5, 6, 70], dtype=torch.int32)
    blkseq, firstblk = tk._block_run_table(cu, 4, dm.num_segments(cu, 4))
    assert blkseq.tolist() == [0, 0, 2] + [3] * 16 and firstblk.tolist() == [0, 2, 2, 3]
    assert blkseq.dtype == firstblk.dtype == torch.int32


@pytest.mark.parametrize("bad", [dict(blocks=3), dict(tile=8, chunk=16), dict(tile=4, chunk=4)])
def test_bad_run_settings(bad):
    st = _tk().LaunchSettings(tile=bad.get("tile", 32), chunk=bad.get("chunk", 8), num_warps=1,
                              blocks_per_program=bad.get("blocks", 4))
    with pytest.raises(ValueError, match="^settings"):
        _check(packed_case([9, 4], seed=1, block_size=5), st=st)
