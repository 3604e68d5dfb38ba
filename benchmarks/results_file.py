"""Shared by the benchmark scripts: the machine description, peak-memory probes, and RESULTS.md sections.

Each script owns one section of RESULTS.md, delimited by HTML comments, and rewrites only that section, so the
two scripts can run in any order without clobbering each other's tables.
"""

import os
import platform
import re
import resource
from pathlib import Path

import torch

RESULTS_PATH = Path(__file__).with_name("RESULTS.md")
HEADER = (
    "# Benchmarks\n\n"
    "Written by `benchmarks/bench_loss.py` and `benchmarks/bench_step.py`; each rewrites only its own section.\n"
    "Every ratio is against the baseline measured in the same run (same process for times, same inputs).\n"
)


def machine_description(device: str) -> str:
    """One paragraph: CPU/GPU, cores, memory, and the versions of the libraries that matter."""
    import transformers
    import trl

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    parts = [
        f"CPU: {cpu}, {os.cpu_count()} logical cores, {mem_gib:.1f} GiB RAM, torch threads {torch.get_num_threads()}",
    ]
    if device.startswith("cuda"):
        parts.append(f"GPU: {torch.cuda.get_device_name(0)}")
    parts.append(
        f"python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}, "
        f"trl {trl.__version__}"
    )
    return "; ".join(parts)


class PeakMemory:
    """Peak memory above a baseline: `torch.cuda.max_memory_allocated` on a GPU, peak RSS (VmHWM) on a CPU.

    On Linux the RSS high-water mark is reset through /proc/self/clear_refs so that the peak belongs to the
    measured code, not to imports; without that (other systems) the process-lifetime ru_maxrss is used.
    """

    def __init__(self, device: str):
        self.device = device

    @staticmethod
    def _status_kib(field: str):
        try:
            match = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
        except OSError:
            return None
        return int(match.group(1)) if match else None

    def start(self) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
            return
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        except OSError:
            pass
        current = self._status_kib("VmRSS")
        self.base = (current if current is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024

    def peak_above_base(self) -> int:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() - self.base
        peak = self._status_kib("VmHWM")
        if peak is None:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak * 1024 - self.base


def write_section(name: str, body: str, path: Path = RESULTS_PATH) -> None:
    """Replace (or append) the section called `name` of RESULTS.md with `body`."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = path.read_text() if path.exists() else HEADER
    block = f"{start}\n{body.rstrip()}\n{end}"
    if start in text and end in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)
