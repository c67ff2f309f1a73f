"""dllm_masks.integrations.hf for real: a tiny randomly initialized Llama trains through
Trainer.train() on the CPU (loss falls), resumes with the masks of an uninterrupted run,
accumulates like one big batch, and runs under torchrun (2 processes, gloo) through accelerate."""
import json
import math
import os
import signal
import socket
import subprocess
import sys

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")
pytest.importorskip("datasets")

sys.path.insert(0, os.path.dirname(__file__))
import _hf_tiny as H  # noqa: E402

import dllm_masks as dm  # noqa: E402
from dllm_masks.integrations.hf import MASKER_STATE, DiffusionCollator, bidirectional_mask_4d  # noqa: E402


def test_import_dllm_masks_does_not_import_transformers():
    code = "import sys, dllm_masks, dllm_masks.integrations; assert 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_trainer_loss_falls(tmp_path, capsys):
    tr = H.trainer(str(tmp_path), max_steps=24, complementary=True, weight=2.0, sigma=(0.3, 0.8))
    tr.train()
    ls = H.losses(tr)
    assert len(ls) == 24 and all(math.isfinite(x) for x in ls)
    first, last = sum(ls[:5]) / 5, sum(ls[-5:]) / 5
    with capsys.disabled():
        print(f"\nHF Trainer (MDLM, complementary, w=2): loss {ls[0]:.3f} -> {ls[-1]:.3f}; "
              f"mean of first 5 {first:.3f}, last 5 {last:.3f}")
    assert last < first - 0.3
    # evaluation: its own mask stream, restarted at every evaluate(), and the training masks untouched
    step = tr.masker.step
    e1 = tr.evaluate(H.dataset(32, seed=1))["eval_loss"]
    e2 = tr.evaluate(H.dataset(32, seed=1))["eval_loss"]
    assert math.isfinite(e1) and e1 == e2 and tr.masker.step == step


def test_model_is_bidirectional_through_the_4d_mask():
    m = H.model().eval()
    ids = torch.randint(4, 40, (1, 10), generator=torch.Generator().manual_seed(0))
    other = ids.clone()
    other[0, -1] = 3
    mask = bidirectional_mask_4d(torch.ones(1, 10, dtype=torch.long))
    with torch.no_grad():
        a = m(input_ids=ids, attention_mask=mask).logits[0, 0]
        b = m(input_ids=other, attention_mask=mask).logits[0, 0]
        c = m(input_ids=ids).logits[0, 0]  # the model's own causal mask
        d = m(input_ids=other).logits[0, 0]
    assert not torch.allclose(a, b) and torch.allclose(c, d)


def test_block_diffusion_resume_draws_the_uninterrupted_masks(tmp_path):
    kw = dict(block_size=4, complementary=True, weight=3.0, sigma=dm.schedules.cosine(), max_steps=6)
    full_rec, part_rec, res_rec = [], [], []
    full = H.trainer(str(tmp_path / "full"), record=full_rec, **kw)
    full.train()
    part = H.trainer(str(tmp_path / "part"), record=part_rec, save_steps=3, **kw)
    part.train()
    ckpt = tmp_path / "part" / "checkpoint-3"
    assert json.loads((ckpt / MASKER_STATE).read_text()) == {"step": 3, "seed": 0}
    resumed = H.trainer(str(tmp_path / "part"), record=res_rec, **kw)
    resumed.train(resume_from_checkpoint=str(ckpt))
    assert len(res_rec) == 3
    for (a, da), (b, db) in zip(full_rec[3:], res_rec):
        assert da == db and all(torch.equal(x, y) for x, y in zip(a, b))
    assert H.losses(resumed)[-3:] == pytest.approx(H.losses(full)[-3:], rel=1e-4)


def test_accumulation_equals_one_big_batch(tmp_path):
    kw = dict(complementary=True, weight=2.0, sigma=(0.3, 0.8), max_steps=2, norm="sequence")
    big = H.trainer(str(tmp_path / "big"), batch=8, accum=1, **kw)
    big.use_sample_ids = True
    big.train()
    acc = H.trainer(str(tmp_path / "acc"), batch=4, accum=2, **kw)
    acc.use_sample_ids = True
    acc.train()
    for p, q in zip(big.model.parameters(), acc.model.parameters()):
        assert torch.allclose(p, q, atol=2e-5)
    assert H.losses(big) == pytest.approx(H.losses(acc), rel=1e-4)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


PORT_TAKEN = ("Address already in use", "EADDRINUSE", "address already in use")


def _torchrun(script, out):
    """Run ``script OUT`` under torchrun with 2 CPU processes; the JSON it writes. A launch that
    lost its free port to another process before binding it is retried once on a new port."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for attempt in range(2):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(_free_port()), os.path.join(os.path.dirname(__file__), script), str(out)]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                start_new_session=True)
        try:
            _, err = proc.communicate(timeout=180)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the launcher and its two workers
            proc.communicate()
            raise
        if proc.returncode == 0 or attempt == 1 or not any(p in err for p in PORT_TAKEN):
            break
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.read_text())


def test_torchrun_two_processes_gloo(tmp_path, capsys):
    res = _torchrun("_hf_tiny.py", tmp_path / "out.json")
    with capsys.disabled():
        print(f"\ntorchrun x2 (gloo, DDP through accelerate): {res}")
    assert res["world"] == 2 and res["backend"] == "gloo"
    assert res["params_equal"] and res["masks_differ"]
    # the step normalizer (sequence norm) counts every micro-batch of every rank: 2 ranks x 2 x 4 rows x 2 views
    assert res["normalizers"] == [32.0] * len(res["normalizers"])
    assert all(math.isfinite(x) for x in res["losses"]) and res["losses"][-1] < res["losses"][0]


def test_fsdp2_on_cpu_gives_the_one_batch_gradient(tmp_path, capsys):
    """torch's FSDP2 (fully_shard) on the CPU with gloo: the sharded gradient of the globally
    normalized loss equals an unsharded model's gradient on the whole global batch."""
    res = _torchrun("_fsdp_cpu.py", tmp_path / "fsdp.json")
    with capsys.disabled():
        print(f"\nFSDP2 x2 on CPU: {res}")
    assert res["sharded"].startswith("FSDP") and res["loss"] == pytest.approx(res["ref_loss"], rel=1e-5)
    assert res["max_grad_diff"] <= 1e-5 * max(res["max_grad"], 1.0)


def test_collator_labels_prompt_len_and_spans():
    col = DiffusionCollator(pad_token_id=0, pad_to_multiple_of=4)
    feats = [{"input_ids": [5, 6, 7, 8, 9], "labels": [-100, -100, 7, 8, 9], "priority": [0, 0, 1, 0, 1]},
             {"input_ids": [5, 6, 7], "prompt_len": 1, "priority_token_spans": [(2, 3)]}]
    b = col(feats)
    assert b["input_ids"].shape == (2, 8) and b["attention_mask"].sum().item() == 8
    assert b["labels"][1].tolist() == [-100, 6, 7, -100, -100, -100, -100, -100]
    assert b["priority"][0].tolist()[:5] == [False, False, True, False, True] and b["priority"][1, 2]
    chars = {"input_ids": [5, 6, 7], "labels": [-100, 6, 7], "offset_mapping": [(0, 3), (3, 5), (5, 9)],
             "priority_spans": [(4, 6)]}
    assert col([chars])["priority"][0, :3].tolist() == [False, True, True]
    with pytest.raises(ValueError, match="^features"):
        col([{"input_ids": [1, 2]}])
