"""The main job end to end (shrunk), the shipped configs, and the show-mask command."""
from __future__ import annotations

import glob
import json
import os
from pathlib import Path

import pytest

import _sft  # noqa: F401  (one thread)
from dllm_masks.cli import main
from dllm_masks.cli.demo import DEMO_CONFIG
from dllm_masks.train.config import TrainConfig, load_config

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("path", sorted(glob.glob(str(REPO / "configs" / "*.json"))),
                         ids=lambda p: os.path.basename(p))
def test_shipped_configs_are_valid(path):
    cfg = load_config(path)
    assert cfg.mask.block_size == 32 and (cfg.mask.sigma_low, cfg.mask.sigma_high) == (0.3, 0.8)
    assert cfg.mask.weight == 2.0 and cfg.mask.complementary


def test_demo_config_is_the_paper_recipe():
    cfg = TrainConfig.from_dict(DEMO_CONFIG)
    assert cfg.data.annotate == {"code": 0.1, "math": 0.5}
    assert (cfg.mask.block_size, cfg.mask.sigma_low, cfg.mask.sigma_high, cfg.mask.weight) == (32, 0.3, 0.8, 2.0)
    assert cfg.mask.complementary and cfg.data.round_to_block


def test_demo_runs_end_to_end(tmp_path, capsys):
    rc = main(["demo", "--steps", "3", "--run-dir", str(tmp_path / "demo"), "--threads", "1",
               "--set", "data.source=bundled:24", "--set", "data.eval_fraction=0.15",
               "--set", "eval.generate=2", "--set", "eval.generate_train=1", "--set", "eval.gen_length=32",
               "--set", "eval.steps_per_block=8", "--set", "progress=false"])
    out = capsys.readouterr().out
    assert rc == 0
    for line in ("annotated", "trained steps 1-3", "held-out loss", "masked-token accuracy", "loss plot:",
                 "filled in by one forward pass",
                 "--- held-out", "--- train", "demo finished in"):
        assert line in out, (line, out[-2000:])
    res = json.loads((tmp_path / "demo" / "result.json").read_text())
    assert res["steps"] == 3 and os.path.isfile(res["plot"]) and res["heldout"]["tokens"] > 0
    cfg = json.loads((tmp_path / "demo" / "config.json").read_text())
    assert cfg["data"]["annotate"] == {"code": 0.1, "math": 0.5} and cfg["max_steps"] == 3


def test_train_cli_reports_bad_input_without_a_traceback(tmp_path, capsys):
    assert main(["train", "--set", "optim.lr=-1"]) == 2
    assert "optim.lr: must be > 0" in capsys.readouterr().err
    assert main(["train", "--config", str(tmp_path / "missing.json")]) == 2


def test_show_mask(capsys):
    assert main(["show-mask", "--sigma", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "view 0" in out and "view 1 (complement" in out and "q1=" in out
