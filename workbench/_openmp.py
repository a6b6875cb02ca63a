"""Free the calling thread's OpenMP worker threads, so that the learner's own team runs at speed.

libgomp (the OpenMP runtime of torch's CPU wheels) gives every thread that runs a parallel
region its own team of worker threads, kept for the next region. When the teams' threads
outnumber the cores, libgomp stops letting idle workers spin: each parallel region then starts
with a futex wake-up. On 2 cores a 126k-element multiply took 8 us on the learner's thread
alone and 72-79 us once the thread that loaded the model kept its team (measured), and an
edit of SmolLM2 (about 30 residual steps) took 9.5 s on the learner's thread against 7.0 s on
the main thread, for that reason only.

``omp_pause_resource_all`` (OpenMP 5.0) frees the calling thread's team; that thread's next
parallel region starts a new one. torch does not expose it, hence ctypes, on the runtimes
this process has loaded (none found, or not Linux: nothing to do).
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys

__all__ = ["free_cores", "release_thread_team"]

OMP_PAUSE_SOFT = 1  # omp_pause_resource_t: free the threads, keep what is cheap to keep


@functools.cache
def _runtimes() -> tuple[ctypes.CDLL, ...]:
    """The OpenMP runtimes loaded in this process that can pause (torch's libgomp)."""
    if not sys.platform.startswith("linux"):
        return ()
    try:
        with open("/proc/self/maps", encoding="utf-8") as f:
            paths = sorted({line.split()[-1] for line in f if "libgomp" in line})
    except OSError:
        return ()
    found = []
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
            pause = lib.omp_pause_resource_all
        except (OSError, AttributeError):
            continue
        pause.argtypes = [ctypes.c_int]
        pause.restype = ctypes.c_int
        found.append(lib)
    return tuple(found)


def release_thread_team() -> bool:
    """Free the OpenMP worker threads of the calling thread's team (cheap when it has none);
    whether a runtime did it. Call it where a thread is done with parallel work for a while.
    """
    done = False
    for lib in _runtimes():
        done = lib.omp_pause_resource_all(OMP_PAUSE_SOFT) == 0 or done
    return done


def free_cores(own_threads: int) -> int:
    """Usable cores less those other processes' runnable tasks hold now (/proc/loadavg's
    running count less this process's running threads). A team bigger than the free cores
    waits at every barrier for a parked member: 2 threads took 5-10x longer than 1 on 2 busy
    cores (measured).

    This process's own threads are not counted: an OpenMP team member spinning idle after a
    parallel region shows as running, and counting it had the learner take one core of two
    for whole updates (SmolLM2: its optimizer step 220 ms instead of 115). Callers account for
    their own readers (the publisher's count). Where /proc/self/task cannot be read, the
    caller's ``own_threads`` are subtracted instead."""
    affinity = getattr(os, "sched_getaffinity", None)
    cores = len(affinity(0)) if affinity is not None else (os.cpu_count() or 1)
    try:
        with open("/proc/loadavg") as f:
            running = int(f.read().split()[3].split("/")[0])
    except (OSError, ValueError, IndexError):
        return cores
    mine = _own_running()
    return max(1, cores - max(0, running - (own_threads if mine is None else mine)))


def _own_running() -> int | None:
    """How many of this process's threads are running or runnable now; None if unknown."""
    try:
        count = 0
        for tid in os.listdir("/proc/self/task"):
            try:
                with open(f"/proc/self/task/{tid}/stat") as f:
                    stat = f.read()
            except FileNotFoundError:  # the thread ended meanwhile
                continue
            count += stat[stat.rindex(")") + 2] == "R"  # the state follows "(comm) "
        return count
    except (OSError, ValueError, IndexError):
        return None
