"""Checkpoints that survive faults.

A checkpoint is written to ``NAME.tmp-PID`` beside its final name, flushed and fsync'ed, then
renamed over the final name (atomic on POSIX) and the folder fsync'ed: a run killed at any
moment leaves either the old set of complete checkpoints or the new one, plus at worst a stray
temporary file that resuming ignores and removes.

File format: ``MAGIC`` (8 bytes), payload length (8 bytes, little-endian), SHA-256 of the
payload (32 bytes), then the payload (``torch.save`` of a dict of tensors and plain values,
loaded back with ``weights_only=True``). A file that is truncated, fails its checksum, or is not a
checkpoint at all is refused with :class:`CheckpointError` naming the file and what is wrong.

Test hook: with ``DLLM_MASKS_CKPT_PAUSE_STEP=S`` and ``DLLM_MASKS_CKPT_PAUSE_FILE=PATH`` in the
environment, the writer of the checkpoint of step S stops after half of its bytes, fsyncs them,
creates PATH and sleeps, so a test can SIGKILL it mid-write deterministically.
"""
from __future__ import annotations

import hashlib
import io
import os
import re
import struct
import time
from typing import List, Optional, Tuple

import torch

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "list_checkpoints", "latest_checkpoint",
           "checkpoint_path", "remove_stale_temporaries", "prune_checkpoints"]

MAGIC = b"DLMCKPT1"
_HEADER = struct.Struct("<8sQ32s")
_NAME = re.compile(r"^step-(\d{8})\.pt$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, truncated, corrupt, or from another run."""


def checkpoint_path(ckpt_dir: str, step: int) -> str:
    """``ckpt_dir/step-{step:08d}.pt``: the name of the checkpoint written after ``step`` steps."""
    return os.path.join(ckpt_dir, f"step-{step:08d}.pt")


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some filesystems cannot open a directory
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _pause_hook(step: Optional[int], f) -> None:
    want = os.environ.get("DLLM_MASKS_CKPT_PAUSE_STEP")
    marker = os.environ.get("DLLM_MASKS_CKPT_PAUSE_FILE")
    if want is None or marker is None or step is None or int(want) != step:
        return
    f.flush()
    os.fsync(f.fileno())
    with open(marker, "w") as m:
        m.write(f"{os.getpid()} {f.name}\n")
    while True:  # wait to be killed
        time.sleep(60)


def save_checkpoint(path: str, state: dict, *, step: Optional[int] = None) -> str:
    """Write ``state`` atomically to ``path``.

    Parameters
    ----------
    path : str
        Final file name; its folder is created.
    state : dict
        Tensors, nested dicts/lists and plain values (what ``torch.load(weights_only=True)`` reads).
    step : int, optional
        The training step (only for the test hook).

    Returns
    -------
    str, the path written.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    buf = io.BytesIO()
    torch.save(state, buf)
    payload = buf.getbuffer()
    header = _HEADER.pack(MAGIC, len(payload), hashlib.sha256(payload).digest())
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(header)
            half = len(payload) // 2
            f.write(payload[:half])
            _pause_hook(step, f)
            f.write(payload[half:])
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(folder)
    return path


def load_checkpoint(path: str, map_location="cpu") -> dict:
    """Read and verify a checkpoint.

    Raises
    ------
    CheckpointError
        The file is missing, not a checkpoint, truncated, or fails its checksum.
    """
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path}: no such file")
    with open(path, "rb") as f:
        head = f.read(_HEADER.size)
        if len(head) < _HEADER.size or not head.startswith(MAGIC):
            raise CheckpointError(f"checkpoint {path}: not a dllm-masks checkpoint (bad header)")
        _, n, digest = _HEADER.unpack(head)
        size = os.fstat(f.fileno()).st_size - _HEADER.size
        if n != size:  # bound the length field by the file before reading that much
            what = "truncated" if n > size else "trailing bytes"
            raise CheckpointError(f"checkpoint {path}: {what}: the header says {n} payload bytes but the file holds "
                                  f"{size}; the write was interrupted or the file (or its header) was damaged; delete "
                                  "it to resume from an earlier checkpoint")
        payload = f.read(n + 1)
    if len(payload) != n:
        raise CheckpointError(f"checkpoint {path}: truncated ({len(payload)} of {n} payload bytes"
                              f"{', or trailing bytes' if len(payload) > n else ''}); the write was interrupted "
                              "or the file was damaged; delete it to resume from an earlier checkpoint")
    if hashlib.sha256(payload).digest() != digest:
        raise CheckpointError(f"checkpoint {path}: corrupt (SHA-256 mismatch); delete it to resume from an "
                              "earlier checkpoint")
    try:
        return torch.load(io.BytesIO(payload), map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"checkpoint {path}: unreadable payload ({type(e).__name__}: {e})") from None


def list_checkpoints(ckpt_dir: str) -> List[Tuple[int, str]]:
    """Complete checkpoints ``(step, path)`` in ``ckpt_dir``, oldest first (temporaries are skipped)."""
    if not os.path.isdir(ckpt_dir):
        return []
    out = []
    for name in os.listdir(ckpt_dir):
        m = _NAME.match(name)
        if m:
            out.append((int(m.group(1)), os.path.join(ckpt_dir, name)))
    return sorted(out)


def latest_checkpoint(ckpt_dir: str) -> Optional[Tuple[int, str]]:
    """The newest complete checkpoint, or None."""
    cks = list_checkpoints(ckpt_dir)
    return cks[-1] if cks else None


def remove_stale_temporaries(ckpt_dir: str) -> List[str]:
    """Delete ``*.tmp-PID`` files left by a writer that was killed; returns their paths."""
    gone = []
    if os.path.isdir(ckpt_dir):
        for name in os.listdir(ckpt_dir):
            if ".pt.tmp-" in name:
                p = os.path.join(ckpt_dir, name)
                try:
                    os.unlink(p)
                    gone.append(p)
                except OSError:
                    pass
    return gone


def prune_checkpoints(ckpt_dir: str, keep: int) -> None:
    """Keep the ``keep`` newest complete checkpoints."""
    for _, p in list_checkpoints(ckpt_dir)[:-keep]:
        try:
            os.unlink(p)
        except OSError:
            pass
