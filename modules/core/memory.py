"""How much memory a run may still take on a device: free GPU memory on CUDA; on the host, what the kernel
says is available (psutil if installed, else /proc/meminfo's MemAvailable), capped by the container's cgroup
limit where one is set (a container's MemAvailable is the whole machine's)."""
from __future__ import annotations

from typing import Optional

import torch

# cgroup v2, then v1: (the limit, the usage, the statistics) files; an unlimited v1 group reports a huge number
CGROUP_FILES = (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current", "/sys/fs/cgroup/memory.stat"),
                ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes",
                 "/sys/fs/cgroup/memory/memory.stat"))
# the page cache the kernel drops first, counted in the usage (what `docker stats` leaves out too)
# Page cache the kernel drops before it refuses an allocation: the file pages of the cgroup (v2 "file", v1
# "total_cache"), less the shared memory counted among them (v2 "shmem", v1 "total_shmem"), which it cannot drop.
# Counting only the inactive pages would refuse a run in a container that has just read a dataset or checkpoint.
CACHE_KEYS = (("file", "shmem"), ("total_cache", "total_shmem"))


def available_memory(device: Optional[torch.device] = None) -> tuple[Optional[int], str]:
    """(bytes a run on ``device`` may still allocate, where that was read); (None, why) where nothing can say
    (a host without psutil and without /proc, e.g. macOS)."""
    if device is not None and device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        # what this process's caching allocator holds but does not use is free to it too (a second model loaded)
        free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return free, f"free memory of {device}"
    host, where = _host_available()
    limit = _cgroup_headroom()
    if limit is not None and (host is None or limit < host):
        return limit, "this container's cgroup limit less its usage"
    return host, where


def _host_available() -> tuple[Optional[int], str]:
    try:
        import psutil
    except ImportError:
        psutil = None
    if psutil is not None:
        return int(psutil.virtual_memory().available), "available host memory (psutil)"
    try:
        with open("/proc/meminfo") as stream:
            for line in stream:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024, "MemAvailable in /proc/meminfo"
    except OSError:
        pass
    return None, "no psutil and no /proc/meminfo"


def _cgroup_headroom() -> Optional[int]:
    """The cgroup's limit less its usage (less the page cache it can drop), or None without a limit."""
    for limit_file, usage_file, stat_file in CGROUP_FILES:
        try:
            with open(limit_file) as stream:
                limit = stream.read().strip()
            with open(usage_file) as stream:
                usage = int(stream.read().strip())
        except (OSError, ValueError):
            continue
        if limit == "max" or not limit.isdigit() or int(limit) >= 1 << 60:
            return None
        return max(0, int(limit) - usage + _reclaimable(stat_file))
    return None


def _reclaimable(stat_file: str) -> int:
    try:
        with open(stat_file) as stream:
            fields = dict(line.split() for line in stream if len(line.split()) == 2)
    except OSError:
        return 0
    for cache, shared in CACHE_KEYS:
        if fields.get(cache, "").isdigit():
            unreclaimable = fields.get(shared, "0")
            return max(0, int(fields[cache]) - (int(unreclaimable) if unreclaimable.isdigit() else 0))
    return 0
