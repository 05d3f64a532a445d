"""Is anything else using the CPUs while a benchmark runs? Timed comparisons on a shared machine are not.

On a small machine a second busy process does not just halve the speed of a multi-threaded torch
step: threads that wait for each other at every operator are descheduled, and a step can become ten
times slower, differently for each model (more small operators suffer more). Wall-time budgets and
tokens/s measured then compare the load, not the models. ``LoadWatch`` samples the 1-minute load
average while a benchmark runs and says, under its table, whether the run was alone.

    load = LoadWatch().start()
    ...                      # the measurements
    print(load.verdict())    # stops sampling; under the table
"""

from __future__ import annotations

import os
import platform
import threading
import time
from pathlib import Path

IDLE = 1.5  # a 1-minute load average below this on start: nothing else is running


class LoadWatch:
    def __init__(self, every_s: float = 10.0, threads: int | None = None):
        import torch

        self.cores = os.cpu_count() or 1
        self.threads = threads or torch.get_num_threads()  # what the benchmark itself adds to the load
        self.every_s, self.samples = every_s, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while True:
            self.samples.append(os.getloadavg()[0])
            if self._stop.wait(self.every_s):
                return

    def start(self, settle_s: float = 90.0) -> LoadWatch:
        """Start sampling once the 1-minute load average has fallen below ``IDLE`` (waiting up to ``settle_s``):
        it lags by about a minute, so a benchmark started right after another one would otherwise be
        judged by the load its predecessor left behind."""
        deadline = time.monotonic() + settle_s
        while os.getloadavg()[0] > IDLE and time.monotonic() < deadline:
            time.sleep(5)
        self._thread.start()
        return self

    def verdict(self) -> str:
        """Stop sampling; one line: the load seen, and whether timings from this run can be trusted."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        if not self.samples:
            return "load: not sampled"
        peak, first = max(self.samples), self.samples[0]
        # the 1-minute average lags: our own threads account for up to ``threads``; allow one more for noise
        limit = min(self.threads, self.cores) + 1.0
        line = f"load average: {first:.2f} at the start, at most {peak:.2f} during the run, on {self.cores} cores"
        if first > IDLE or peak > limit:
            return (f"{line}. WARNING: other processes shared the CPUs; the timings, the wall-time budgets "
                    "and the results that depend on them are not reliable. Run again on an idle machine.")
        return f"{line}: the run was alone"


def cpu_flags() -> str:
    """The machine, its cores, torch's threads and which of the instruction sets that decide CPU speed it has: printed
    with every table, since timings compare only within one machine."""
    import torch

    line = next((x for x in Path("/proc/cpuinfo").read_text().splitlines() if x.startswith("flags")), "flags:") \
        if Path("/proc/cpuinfo").exists() else "flags:"
    shown = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in line.split()]
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads, "
            f"flags: {' '.join(shown) or 'none of avx2/avx512f/avx512_bf16/amx_bf16'}")
