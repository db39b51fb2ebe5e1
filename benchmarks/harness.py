"""One benchmark harness for every op: graph-replay kernel timing with the L2 flushed before each
replay, eager host timing, the measured copy ceiling, JSON rows with GPU and library versions,
markdown tables. Benchmarks import FlashInfer when it is installed and skip it when not.
"""

from __future__ import annotations

import json
import os
import platform
import signal
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_DIR = os.path.join(ROOT, "benchmarks", "results")
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def peer_left_out() -> bool:
    """``BENCH_NO_PEER=1``: FlashInfer is not run (a device call too short for its first-use compiles)."""
    return os.environ.get("BENCH_NO_PEER") == "1"


def try_import_flashinfer():
    """The comparison peer, or None when it is not installed (its JIT may compile on first use) or
    ``BENCH_NO_PEER=1`` leaves it out (a device call too short for FlashInfer's first-use compiles:
    its rows then come from an earlier run, which BENCHMARKS.md says)."""
    if peer_left_out():
        print("[harness] BENCH_NO_PEER=1: FlashInfer's rows are skipped")
        return None
    try:
        import flashinfer  # noqa: F401

        return flashinfer
    except Exception as exc:  # noqa: BLE001 - any import failure means "peer absent"
        print(f"[harness] FlashInfer not available ({type(exc).__name__}: {exc}); its rows are skipped")
        return None


_L2_FLUSH: Optional[torch.Tensor] = None


def _flush_l2():
    global _L2_FLUSH
    if _L2_FLUSH is None:
        _L2_FLUSH = torch.empty(256 * 1024 * 1024 // 4, dtype=torch.int32, device="cuda")
    _L2_FLUSH.zero_()


def time_graph(fn: Callable[[], object], reps: int = 100, warmup: int = 5, flush_l2: bool = True) -> float:
    """Median kernel time in microseconds of ``fn`` captured in a CUDA graph and replayed ``reps``
    times, the L2 cache flushed before each replay so small problems do not measure the cache."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    for _ in range(warmup):
        graph.replay()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    for i in range(reps):
        if flush_l2:
            _flush_l2()
        starts[i].record()
        graph.replay()
        ends[i].record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends)) * 1e3


def time_eager(fn: Callable[[], object], reps: int = 100, warmup: int = 5, flush_l2: bool = True) -> float:
    """Median time in microseconds between CUDA events around an eager call (kernel plus launch gaps)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    for i in range(reps):
        if flush_l2:
            _flush_l2()
        starts[i].record()
        fn()
        ends[i].record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends)) * 1e3


def host_time(fn: Callable[[], object], reps: int = 200, warmup: int = 10) -> float:
    """Median host (CPU) time in microseconds of one call, not waiting for the GPU. Synchronizes
    every 20 calls so the launch queue never fills and the figure stays the host's own cost."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    samples = []
    for i in range(reps):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
        if i % 20 == 19:
            torch.cuda.synchronize()
    torch.cuda.synchronize()
    return statistics.median(samples) * 1e6


_COPY_TBPS: Optional[float] = None


def copy_ceiling_tbps() -> float:
    """Measured device-to-device copy bandwidth in TB/s, counting bytes read plus bytes written."""
    global _COPY_TBPS
    if _COPY_TBPS is None:
        n = 1 << 30
        a = torch.empty(n, dtype=torch.uint8, device="cuda")
        b = torch.empty_like(a)
        us = time_eager(lambda: b.copy_(a), reps=30, flush_l2=False)
        _COPY_TBPS = 2 * n / (us * 1e-6) / 1e12
    return _COPY_TBPS


def environment() -> Dict[str, str]:
    import triton

    env = {
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "none",
        "torch": torch.__version__,
        "triton": triton.__version__,
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    if peer_left_out():
        env["flashinfer"] = "not run (BENCH_NO_PEER=1)"
        return env
    try:
        import flashinfer

        env["flashinfer"] = getattr(flashinfer, "__version__", "unknown")
    except Exception:  # noqa: BLE001
        env["flashinfer"] = "absent"
    return env


def write_partial_on_sigterm(name: str, rows: List[dict], script: str, directory: Optional[str] = None) -> None:
    """If the process is terminated (``timeout`` sends SIGTERM), append the rows measured so far to
    ``benchmarks/results/<name>.json`` as a run marked partial, then exit; the script's own
    ``write_results`` at its end writes the complete run otherwise. ``script``: the script's path
    as run (the command is rebuilt from ``sys.argv``)."""

    def handler(signum, frame):  # noqa: ARG001
        write_results(name, rows, f"PYTHONPATH=. python3 {script} " + " ".join(sys.argv[1:]),
                      extra={"partial": "stopped by SIGTERM before the run's end"}, directory=directory)
        print(f"{script}: stopped; {len(rows)} rows written to {directory or RESULTS_DIR}/{name}.json", flush=True)
        os._exit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def write_results(name: str, rows: List[dict], command: str, extra: Optional[dict] = None,
                  directory: Optional[str] = None) -> str:
    """Append one run (environment, command, rows with the GPU on each) to
    ``benchmarks/results/<name>.json`` (``{"runs": [...]}``, oldest first); earlier runs are kept.
    A copy of this run alone goes to ``$OUT/<name>.json`` when ``OUT`` is set (the device machine)."""
    directory = directory or RESULTS_DIR
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, f"{name}.json")
    env = environment()
    run = {"environment": env, "command": command,
           "rows": [{"gpu": env["gpu"], **row} for row in rows]}
    if extra:
        run.update(extra)
    runs = []
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
        runs = old["runs"] if "runs" in old else [old]  # files from before runs were appended
    runs.append(run)
    with open(path, "w") as f:
        json.dump({"runs": runs}, f, indent=1)
    out = os.environ.get("OUT")
    if out:
        with open(os.path.join(out, f"{name}.json"), "w") as f:
            json.dump(run, f, indent=1)
    return path


def latest_run(name: str, directory: Optional[str] = None) -> Optional[dict]:
    """The newest run of ``benchmarks/results/<name>.json``, or None."""
    path = os.path.join(directory or RESULTS_DIR, f"{name}.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        data = json.load(f)
    return data["runs"][-1] if "runs" in data else data


def markdown_table(header: List[str], rows: List[List[object]]) -> str:
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
        return str(v)

    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def geomean(values: List[float]) -> float:
    import math

    values = [v for v in values if v and v > 0]
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else float("nan")
