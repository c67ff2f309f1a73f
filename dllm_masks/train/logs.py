"""Run logs: a CSV row per step (rewritten on resume so it never holds steps past the checkpoint),
TensorBoard scalars when the package is installed, and a loss plot (matplotlib PNG)."""
from __future__ import annotations

import csv
import logging
import math
import os
from typing import Dict, List, Optional

__all__ = ["CSV_FIELDS", "RunLog", "read_log", "plot_loss"]

log = logging.getLogger("dllm_masks")

CSV_FIELDS = ["step", "loss", "eval_loss", "eval_acc", "lr", "grad_norm", "tokens", "masked", "seqs", "micro_batches",
              "epoch", "elapsed_s", "importance_ms", "importance_store_bytes", "importance_peak_bytes"]


def read_log(path: str) -> List[Dict[str, str]]:
    """Rows of a ``log.csv`` (strings; empty strings where a value was not measured)."""
    if not os.path.isfile(path):
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


class RunLog:
    """Append-only CSV plus optional TensorBoard, resumable at a step.

    Parameters
    ----------
    run_dir : str
    start_step : int
        Rows with ``step > start_step`` (written by a run that died after its last checkpoint)
        are dropped; the rest are kept.
    tensorboard : bool
        Also write TensorBoard scalars where ``torch.utils.tensorboard`` imports.
    """

    def __init__(self, run_dir: str, start_step: int = 0, tensorboard: bool = True):
        os.makedirs(run_dir, exist_ok=True)
        self.path = os.path.join(run_dir, "log.csv")
        rows = [r for r in read_log(self.path) if int(r["step"]) <= start_step] if start_step else []
        tmp = self.path + ".tmp"
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, CSV_FIELDS)
            w.writeheader()
            w.writerows({k: r.get(k, "") for k in CSV_FIELDS} for r in rows)
        os.replace(tmp, self.path)
        self._f = open(self.path, "a", newline="")
        self._w = csv.DictWriter(self._f, CSV_FIELDS)
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(os.path.join(run_dir, "tb"), purge_step=start_step + 1)
            except Exception as e:  # noqa: BLE001 - tensorboard is optional
                log.debug("dllm_masks: TensorBoard not written (%s)", e)

    def write(self, row: dict) -> None:
        self._w.writerow({k: ("" if row.get(k) is None else row[k]) for k in CSV_FIELDS})
        self._f.flush()
        if self.tb is not None:
            for k in ("loss", "eval_loss", "eval_acc", "lr", "grad_norm", "importance_ms"):
                if row.get(k) is not None:
                    self.tb.add_scalar(f"train/{k}", float(row[k]), row["step"])

    def close(self) -> None:
        self._f.close()
        if self.tb is not None:
            self.tb.close()


def plot_loss(csv_path: str, png_path: str, title: str = "") -> Optional[str]:
    """Plot training loss (and held-out loss where measured) against step; returns the PNG path."""
    rows = read_log(csv_path)
    if not rows:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as e:  # noqa: BLE001 - matplotlib is a dev extra
        log.warning("dllm_masks: no loss plot (%s)", e)
        return None
    step = [int(r["step"]) for r in rows]
    loss = [float(r["loss"]) for r in rows]
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=120)
    ax.plot(step, loss, lw=0.8, alpha=0.45, color="C0", label="train loss (step)")
    k = max(1, len(loss) // 20)
    if len(loss) > k:
        smooth = [sum(loss[max(0, i - k + 1):i + 1]) / len(loss[max(0, i - k + 1):i + 1]) for i in range(len(loss))]
        ax.plot(step, smooth, lw=1.6, color="C0", label=f"train loss ({k}-step mean)")
    ev = [(int(r["step"]), float(r["eval_loss"])) for r in rows if r.get("eval_loss") not in (None, "")]
    if ev:
        ax.plot(*zip(*ev), "o-", color="C3", ms=3.5, lw=1.2, label="held-out loss")
    finite = [x for x in loss if math.isfinite(x)]
    if finite and max(finite) / max(min(finite), 1e-9) > 20:
        ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("masked-diffusion loss")
    ax.set_title(title or os.path.basename(os.path.dirname(os.path.abspath(csv_path))), fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png_path)
    plt.close(fig)
    return png_path
