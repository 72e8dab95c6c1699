"""CPU threads: how many intra-op threads a synth process uses, and how they wait.

Two facts drive this module (measured in ``benchmarks/results/contention.md``):

* torch's default is one intra-op thread per core it can see. Two jobs on the same two cores then
  run four busy threads, and OpenMP threads that spin while they wait for each other steal the core
  from the thread they wait for: a job that takes 21 s alone took 118 s with a second one beside it.
* CPU kernels split their work by thread count, so the same image computed with 1 and 2 threads can
  differ in its last bits (and, rarely, by a grey level). A sample set therefore records the thread
  count it was made with (:func:`identity_threads`), exactly as it records the batch size on CUDA.

The choice, in order: ``synth --threads N`` (or ``SYNTH_THREADS``), then ``OMP_NUM_THREADS`` when the
user set it, else the cores this process may run on (CPU affinity and cgroup quota) divided by the
processes torchrun starts on this machine (``LOCAL_WORLD_SIZE``).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

from synth.errors import SynthError

# libgomp reads its wait policy once, when torch loads it; the CLI calls set_wait_policy() before that.
# A bounded spin keeps the hand-off fast when a job has the cores to itself, and gives the core
# away quickly when another job needs it (GOMP's own default spins 300,000 times): measured in
# benchmarks/results/contention.md, 1,000 keeps one job alone as fast and two jobs on two cores at 1.75x.
DEFAULT_SPINCOUNT = "1000"


class ThreadsError(SynthError, ValueError):
    """A thread count that cannot be used (0, negative, not a number)."""


@dataclass(frozen=True)
class ThreadChoice:
    threads: int
    cores: int
    local_processes: int
    source: str  # "--threads", "SYNTH_THREADS", "OMP_NUM_THREADS" or "auto"

    def line(self) -> str:
        """The line printed at start: the choice, why, and how to change it."""
        per = f" / {self.local_processes} processes on this machine" if self.local_processes > 1 else ""
        how = {"auto": f"{self.cores} cores available{per}", "OMP_NUM_THREADS": "from OMP_NUM_THREADS",
               "SYNTH_THREADS": "from SYNTH_THREADS", "--threads": "from --threads"}[self.source]
        return f"threads: {self.threads} CPU thread(s) ({how}); change with synth --threads N"


def cores_available() -> int:
    """Cores this process may use: its CPU affinity, capped by a cgroup v2 CPU quota (containers, Slurm)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.floor(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def parse_threads(value, source: str) -> int:
    """A positive thread count from a flag or an environment variable, else a one-line error naming it."""
    try:
        n = int(str(value).strip())
    except ValueError:
        raise ThreadsError(f"{source} {value!r} is not a whole number; give a thread count such as 1 or 4") from None
    if n < 1:
        raise ThreadsError(f"{source} must be >= 1, got {n}")
    return n


def choose_threads(requested: int | None = None, env: dict | None = None) -> ThreadChoice:
    """The intra-op thread count for this process (see the module docstring for the order)."""
    env = os.environ if env is None else env
    cores = cores_available()
    local = parse_threads(env.get("LOCAL_WORLD_SIZE") or 1, "LOCAL_WORLD_SIZE")
    if requested is not None:
        return ThreadChoice(parse_threads(requested, "--threads"), cores, local, "--threads")
    for name in ("SYNTH_THREADS", "OMP_NUM_THREADS"):
        if env.get(name):
            return ThreadChoice(parse_threads(env[name], name), cores, local, name)
    return ThreadChoice(max(1, cores // local), cores, local, "auto")


def set_wait_policy(env: dict | None = None) -> None:
    """Bounded spinning for OpenMP threads, unless the user chose a policy; call before torch is imported."""
    env = os.environ if env is None else env
    if "OMP_WAIT_POLICY" not in env and "GOMP_SPINCOUNT" not in env:
        env["GOMP_SPINCOUNT"] = DEFAULT_SPINCOUNT


_CHOSEN: ThreadChoice | None = None  # what apply() set in this process (None: nobody chose, e.g. the Python API)


def apply(choice: ThreadChoice) -> None:
    """Use ``choice.threads`` intra-op threads in this process (and in the processes it starts)."""
    import torch

    global _CHOSEN
    _CHOSEN = choice
    torch.set_num_threads(choice.threads)
    os.environ["OMP_NUM_THREADS"] = str(choice.threads)  # DataLoader workers and subprocesses inherit it


def adopt_threads(recorded: int) -> bool:
    """Switch to the thread count a CPU set was made with, when nobody chose one for this process (auto or the
    Python API): a set made by ``torchrun`` or on another machine then resumes with the same numerics. Returns
    False when the user chose a count (--threads, SYNTH_THREADS, OMP_NUM_THREADS): that choice is kept and
    the resume refused, naming the count that resumes it."""
    import torch

    if _CHOSEN is not None and _CHOSEN.source != "auto":
        return False
    torch.set_num_threads(int(recorded))
    return True


def identity_threads() -> int:
    """The intra-op thread count that goes into a CPU sample set's identity."""
    import torch

    return int(torch.get_num_threads())
