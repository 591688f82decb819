"""What the benchmarks record about the machine: CPU model and flags, and other processes' load.

Standard library only, so the PyTorch reference (``torch_reference.py``, run
by a Python that has torch but not this project) imports it too.
"""

import os
import platform
import time

# CPU flags that decide which kernels oneDNN can use
FLAGS_OF_INTEREST = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16",
                     "amx_tile", "amx_bf16")


def cpu_description():
    """``{"model": name, "cpus": count, flag: present for each of FLAGS_OF_INTEREST}``.

    Read from the first processor in /proc/cpuinfo; platform strings and no
    flags elsewhere.
    """
    fields = {}
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    model = fields.get("model name") or platform.processor() or platform.machine()
    flags = set(fields.get("flags", "").split())
    return {"model": model, "cpus": os.cpu_count(),
            **{flag: flag in flags for flag in FLAGS_OF_INTEREST}}


def foreign_cpu_meter():
    """Start measuring other processes' CPU use; returns a function giving it as a fraction.

    The fraction is of all cores' time since the call (Linux ``/proc/stat``
    minus this process's own CPU time): 0 = a quiet machine, 0.5 on 2 cores =
    another process held a full core. None where ``/proc/stat`` is missing.
    """
    def busy_seconds():
        try:
            with open("/proc/stat") as stat:
                ticks = [int(v) for v in stat.readline().split()[1:9]]
        except OSError:
            return None
        return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")

    def own_seconds():
        times = os.times()
        return times.user + times.system

    busy0, own0, wall0 = busy_seconds(), own_seconds(), time.perf_counter()

    def foreign():
        busy = busy_seconds()
        if busy is None or busy0 is None:
            return None
        other = (busy - busy0) - (own_seconds() - own0)
        return round(max(0.0, other) / ((time.perf_counter() - wall0) * os.cpu_count()), 3)

    return foreign
