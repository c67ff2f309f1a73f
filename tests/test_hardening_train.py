"""Regression tests: a damaged checkpoint header and a checkpoint folder that is a file are refused
with a message, by the loader and by ``dllm-masks train`` (no traceback)."""
import json

import pytest
import torch

from _sft import tiny_config
from dllm_masks import cli
from dllm_masks.train import checkpoint as ck


@pytest.mark.parametrize("byte", [0x40, 0x80, 0x01, 0xFF])
def test_a_damaged_length_field_is_a_checkpoint_error(tmp_path, byte):
    path = str(tmp_path / "step-00000001.pt")
    ck.save_checkpoint(path, {"x": torch.arange(10)})
    with open(path, "r+b") as f:
        f.seek(15)  # the high byte of the little-endian payload length
        f.write(bytes([byte]))
    with pytest.raises(ck.CheckpointError, match="header says .* payload bytes but the file holds"):
        ck.load_checkpoint(path)


def test_the_length_field_must_match_the_file(tmp_path):
    path = tmp_path / "step-00000001.pt"
    ck.save_checkpoint(str(path), {"x": torch.arange(10)})
    path.write_bytes(path.read_bytes() + b"extra")
    with pytest.raises(ck.CheckpointError, match="but the file holds"):
        ck.load_checkpoint(str(path))


def _train_cli(tmp_path, run_dir, capsys):
    cfg_path = tmp_path / "cfg.json"
    cfg_path.write_text(json.dumps(tiny_config(run_dir, max_steps=1)))
    rc = cli.main(["train", "--config", str(cfg_path), "--no-progress"])
    return rc, capsys.readouterr().err


def test_train_cli_reports_a_damaged_checkpoint_header(tmp_path, capsys):
    run = tmp_path / "run"
    path = ck.checkpoint_path(str(run / "checkpoints"), 1)
    ck.save_checkpoint(path, {"step": 1})
    with open(path, "r+b") as f:
        f.seek(15)
        f.write(b"\x40")
    rc, err = _train_cli(tmp_path, run, capsys)
    assert rc == 2 and "dllm-masks train: error: checkpoint" in err and "header says" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("which", ["checkpoints", "run_dir"])
def test_train_cli_refuses_a_file_where_a_folder_belongs(tmp_path, capsys, which):
    run = tmp_path / "run"
    if which == "checkpoints":
        run.mkdir()
        (run / "checkpoints").write_text("not a folder")
    else:
        run.write_text("not a folder")
    rc, err = _train_cli(tmp_path, run, capsys)
    assert rc == 2 and f"error: {which}: " in err and "is not a folder" in err, err
    assert "Traceback" not in err
