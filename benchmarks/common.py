"""What every benchmark shares: a case description, honest timing, and the device name."""
import dataclasses
import platform
from typing import Callable, Dict, Optional

import torch
import torch.utils.benchmark as tb


@dataclasses.dataclass
class Case:
    op: str
    shape: str
    dtype: str
    device: str
    ours: Callable[[], object]
    peers: Dict[str, Callable[[], object]]
    flops: Optional[float] = None  # useful floating point operations of one call, for TFLOP/s


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    return f"{platform.processor() or platform.machine()} x{torch.get_num_threads()} threads"


def median_seconds(fn: Callable[[], object], device: str, min_run_time: float) -> float:
    """Median of repeated calls after warm-up; torch.utils.benchmark synchronises CUDA around the timings."""
    fn()  # warm-up: first-call allocations, compilation, lazy init
    if device == "cuda":
        torch.cuda.synchronize()
    # Timer defaults to one thread; measure with the threads users get.
    timer = tb.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=min_run_time).median


def peak_memory_bytes(fn: Callable[[], object], device: str) -> Optional[int]:
    if device != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base
