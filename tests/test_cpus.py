"""The default worker count: CPU affinity capped by the cgroup CPU quota, read from fake trees
of /proc and /sys/fs/cgroup laid out as cgroup v1 and v2 hosts and containers lay them out."""

from __future__ import annotations

import os

import pytest

from gaspar_tw.config import default_worker_count
from gaspar_tw.cpus import cgroup_cpu_quota, usable_cpus

AFFINITY = len(os.sched_getaffinity(0))


def tree(root, cgroup: str, files: dict[str, str]):
    """A fake root: C{cgroup} as /proc/self/cgroup, C{files} under /sys/fs/cgroup."""
    (root / "proc/self").mkdir(parents=True)
    (root / "proc/self/cgroup").write_text(cgroup)
    for path, text in files.items():
        file = root / "sys/fs/cgroup" / path
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(text)
    return root


@pytest.mark.parametrize(
    "cgroup, files, quota",
    [
        ("0::/\n", {"cpu.max": "max 100000\n"}, None),  # v2, no quota
        ("0::/\n", {"cpu.max": "150000 100000\n"}, 1.5),  # v2 container
        ("0::/\n", {"cpu.max": "50000 100000\n"}, 0.5),
        # v2 on a host: the process's own cgroup, bounded by its parent's smaller quota
        (
            "0::/app.slice/web.service\n",
            {
                "cpu.max": "max 100000\n",
                "app.slice/cpu.max": "100000 100000\n",
                "app.slice/web.service/cpu.max": "300000 100000\n",
            },
            1.0,
        ),
        # a container seeing the host's path of its cgroup, which is not under its mount
        ("0::/docker/0123abcd\n", {"cpu.max": "250000 100000\n"}, 2.5),
        # v1, as on this machine's kind of hybrid host (the unified mount has no cpu.max)
        (
            "4:memory:/x\n2:cpuacct:/\n1:cpu:/\n0::/\n",
            {
                "cpu/cpu.cfs_quota_us": "150000\n",
                "cpu/cpu.cfs_period_us": "100000\n",
                "unified/cgroup.procs": "",
            },
            1.5,
        ),
        # v1 with the joint cpu,cpuacct mount, nested path, no quota at the root
        (
            "3:cpu,cpuacct:/kubepods/pod1\n",
            {
                "cpu,cpuacct/cpu.cfs_quota_us": "-1\n",
                "cpu,cpuacct/cpu.cfs_period_us": "100000\n",
                "cpu,cpuacct/kubepods/pod1/cpu.cfs_quota_us": "50000\n",
                "cpu,cpuacct/kubepods/pod1/cpu.cfs_period_us": "100000\n",
            },
            0.5,
        ),
        ("3:cpu,cpuacct:/\n", {"cpu,cpuacct/cpu.cfs_quota_us": "-1\n"}, None),  # v1, none
        ("0::/\n", {"cpu.max": "garbage\n"}, None),  # unreadable
        ("0::/\n", {}, None),  # no cpu controller files at all
    ],
)
def test_the_quota_is_read_from_v1_and_v2_trees(tmp_path, cgroup, files, quota):
    assert cgroup_cpu_quota(tree(tmp_path, cgroup, files)) == quota


@pytest.mark.parametrize(
    "cpu_max, cpus",
    [
        ("max 100000", AFFINITY),
        ("150000 100000", min(AFFINITY, 2)),  # rounded up
        ("50000 100000", 1),  # at least one
        ("100000000 100000", AFFINITY),  # a quota above the affinity does not raise it
    ],
)
def test_usable_cpus_round_the_quota_up_within_the_affinity(tmp_path, cpu_max, cpus):
    assert usable_cpus(tree(tmp_path, "0::/\n", {"cpu.max": cpu_max})) == cpus


def test_without_a_readable_cgroup_the_affinity_counts(tmp_path):
    assert cgroup_cpu_quota(tmp_path) is None  # no /proc/self/cgroup at all
    assert usable_cpus(tmp_path) == AFFINITY


def test_the_default_worker_count_on_this_machine():
    assert 1 <= default_worker_count() <= AFFINITY
    assert default_worker_count() == usable_cpus("/")
