"""Run outputs: metrics.jsonl, TensorBoard events and PNG plots of every metric over training steps.

One `MetricsLogger` per run. Under data parallelism every rank computes the same (all-reduced) metrics,
so only rank 0 should write: the trainer passes `enabled=(rank == 0)`, and a disabled logger is a no-op.

metrics.jsonl holds one JSON object per `log` call: {"step": int, "time": unix seconds, <name>: float, ...}.
A resumed run appends to the same file; steps that were logged twice (after the last checkpoint, before
the interruption) are read back with the later value winning (`read_metrics`).
"""

import json
import os
import re
import time
from pathlib import Path
from typing import Any

_RESERVED_KEYS = ("step", "time")


def read_metrics(path: str | os.PathLike) -> dict[str, list[tuple[int, float]]]:
    """Read a metrics.jsonl file into {metric name: [(step, value), ...]} sorted by step.

    When a step appears more than once (a resumed run re-logged it), the last line wins.
    Raises ValueError naming the file and line for a line that is not a JSON object with an int "step".
    """
    path = Path(path)
    by_name: dict[str, dict[int, float]] = {}
    with path.open() as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{line_no}: not valid JSON ({e.msg})") from e
            if not isinstance(record, dict) or not isinstance(record.get("step"), int):
                raise ValueError(f"{path}:{line_no}: expected an object with an integer 'step'")
            step = record["step"]
            for name, value in record.items():
                if name in _RESERVED_KEYS or not isinstance(value, int | float):
                    continue
                by_name.setdefault(name, {})[step] = float(value)
    return {name: sorted(points.items()) for name, points in by_name.items()}


def plot_file_name(metric: str) -> str:
    """File name of a metric's plot: "train/reward" -> "train_reward.png"."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", metric).strip("_") + ".png"


class MetricsLogger:
    """Appends scalar metrics to `run_dir/metrics.jsonl` and TensorBoard (`run_dir/tb/`); plots them.

    Args:
        run_dir: the run directory; created if missing (when enabled).
        enabled: False makes every method a no-op (non-zero ranks).
    """

    def __init__(self, run_dir: str | os.PathLike, enabled: bool = True) -> None:
        if not isinstance(enabled, bool):
            raise TypeError(f"enabled must be a bool, got {type(enabled).__name__}")
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self.tb_dir = self.run_dir / "tb"
        self.plots_dir = self.run_dir / "plots"
        self._file = None
        self._writer = None
        if enabled:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._file = self.metrics_path.open("a")

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        """Record `metrics` (name -> real number or 0-d tensor) at optimizer step `step`.

        Non-finite values are kept (JSON `NaN`/`Infinity`, as Python's json writes and reads them):
        a diverging loss is exactly what the log must show.
        """
        if isinstance(step, bool) or not isinstance(step, int):
            raise TypeError(f"step must be an int, got {type(step).__name__}")
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        if not isinstance(metrics, dict):
            raise TypeError(f"metrics must be a dict, got {type(metrics).__name__}")
        values: dict[str, float] = {}
        for name, value in metrics.items():
            if not isinstance(name, str) or not name:
                raise TypeError(f"metrics keys must be non-empty str, got {name!r}")
            if name in _RESERVED_KEYS:
                raise ValueError(f"metrics[{name!r}]: {name!r} is reserved for the record itself")
            values[name] = _to_float(name, value)
        if not self.enabled:
            return
        record = {"step": step, "time": time.time(), **values}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        writer = self._tensorboard()
        for name, value in values.items():
            writer.add_scalar(name, value, global_step=step)
        writer.flush()

    def plot(self) -> list[Path]:
        """Write one PNG per metric (value against step) to `run_dir/plots/`; returns the files written.

        Reads metrics.jsonl back, so the plots cover the whole run, resumed parts included.
        """
        if not self.enabled:
            return []
        self._file.flush()
        series = read_metrics(self.metrics_path)
        if not series:
            return []
        self.plots_dir.mkdir(parents=True, exist_ok=True)
        import matplotlib

        matplotlib.use("Agg")  # file output only; never needs a display
        import matplotlib.pyplot as plt

        written = []
        for name, points in sorted(series.items()):
            steps = [s for s, _ in points]
            vals = [v for _, v in points]
            fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
            ax.plot(steps, vals, marker="." if len(points) < 50 else None)
            ax.set_xlabel("step")
            ax.set_ylabel(name)
            ax.set_title(f"{self.run_dir.name}: {name}", fontsize=9)
            ax.grid(alpha=0.3)
            fig.tight_layout()
            out = self.plots_dir / plot_file_name(name)
            fig.savefig(out)
            plt.close(fig)
            written.append(out)
        return written

    def close(self) -> None:
        """Flush and close the jsonl file and the TensorBoard writer. Safe to call twice."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> "MetricsLogger":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _tensorboard(self):
        # Imported on first use: tensorboard costs seconds to import and most tools never need it.
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self.tb_dir))
        return self._writer


def _to_float(name: str, value: Any) -> float:
    if isinstance(value, bool):
        raise TypeError(f"metrics[{name!r}] must be a real number, got bool")
    if not isinstance(value, int | float) and hasattr(value, "item"):
        # 0-d / one-element torch tensors and numpy scalars, without importing either here.
        size = value.numel() if hasattr(value, "numel") else getattr(value, "size", 1)
        if size != 1:
            raise TypeError(f"metrics[{name!r}] must be a scalar, got {size} elements")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"metrics[{name!r}] must be a real number, got {type(value).__name__}")
    return float(value)
