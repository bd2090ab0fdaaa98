"""How many CPUs this process may use: its CPU affinity, capped by its cgroup's CPU quota."""

from __future__ import annotations

import math
import os
from pathlib import Path

#: The v1 cpu controller's mount point, by the names distributions give it (under sys/fs/cgroup).
V1_CPU_DIRECTORIES = ("cpu", "cpu,cpuacct", "cpuacct,cpu")


def usable_cpus(root: str | os.PathLike = "/") -> int:
    """The CPUs this process may run on, fewer if its cgroup's quota allows fewer (rounded
    up: a quota of 1.5 CPUs is 2); at least 1. C{root} is where C{/proc} and C{/sys} are
    read from (a test's fake tree)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    quota = cgroup_cpu_quota(root)
    if quota is not None:
        cpus = min(cpus, math.ceil(quota))
    return max(1, cpus)


def cgroup_cpu_quota(root: str | os.PathLike = "/") -> float | None:
    """The CPUs the cgroup quota of this process allows (C{1.5} for "150000 100000"), or
    C{None} if there is none or none can be read.

    Reads cgroup v2 (C{cpu.max}) and v1 (C{cpu.cfs_quota_us} / C{cpu.cfs_period_us}) at this
    process's cgroup path (from C{/proc/self/cgroup}) and each of its parents, and takes the
    smallest: a parent's quota bounds its children. A container usually sees its own cgroup
    as C{/}; one that does not (its path is not under the mount) gets the mount's own files.
    """
    root = Path(root)
    try:
        lines = (root / "proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    mount = root / "sys/fs/cgroup"
    quotas = []
    for line in lines:
        fields = line.split(":", 2)  # "ID:CONTROLLERS:PATH"
        if len(fields) != 3 or not fields[2].startswith("/"):
            continue
        _, controllers, path = fields
        if controllers == "":  # cgroup v2: one unified hierarchy
            quotas += [_v2_quota(d) for d in _directories(mount, path)]
        elif "cpu" in controllers.split(","):  # cgroup v1: the cpu controller's hierarchy
            for name in V1_CPU_DIRECTORIES:
                if (mount / name).is_dir():
                    quotas += [_v1_quota(d) for d in _directories(mount / name, path)]
                    break
    found = [quota for quota in quotas if quota is not None]
    return min(found) if found else None


def _directories(mount: Path, path: str) -> list[Path]:
    """C{path} under C{mount} and each of its parents up to C{mount} itself."""
    parts = [part for part in path.split("/") if part]
    return [mount.joinpath(*parts[:n]) for n in range(len(parts), -1, -1)]


def _v2_quota(directory: Path) -> float | None:
    """C{cpu.max} ("QUOTA PERIOD", or "max PERIOD" for none) as CPUs."""
    try:
        quota, period = (directory / "cpu.max").read_text().split()
        return None if quota == "max" else _ratio(int(quota), int(period))
    except (OSError, ValueError):
        return None


def _v1_quota(directory: Path) -> float | None:
    """C{cpu.cfs_quota_us} (-1 for none) over C{cpu.cfs_period_us}, as CPUs."""
    try:
        quota = int((directory / "cpu.cfs_quota_us").read_text())
        period = int((directory / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return _ratio(quota, period)


def _ratio(quota: int, period: int) -> float | None:
    return quota / period if quota > 0 and period > 0 else None
