"""A cluster meant to be kept is never brought up on storage Kubernetes deletes with the pod.

No kubelet runs here, so the pod is a double: the environment the kubelet gives every container
(KUBERNETES_SERVICE_HOST) and a /proc/self/mountinfo written the way a containerd node writes one
for a step pod of deploy/ (the container's overlay root, the work volume at /var/tmp/platform as
a CSI block device, an emptyDir on the node's disk, a memory-backed emptyDir, a
PersistentVolumeClaim on its own device, an NFS claim, a path with a space). The refusal on a
real pipeline (the restore_pitr job, seeding a standby) is in test_dagster_physical.py and
test_replication.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from platform_orchestration.kube.pod_storage import (
    EphemeralTarget,
    deleted_with_the_pod,
    mount_of,
    parse_mountinfo,
    refuse_unless_kept,
)

POD_UID = "4c1f0d7e-93a2-4b51-a7c4-2f6d1e0b9a31"
STEP_POD_MOUNTINFO = "\n".join([
    "1466 1383 0:373 / / rw,relatime master:386 - overlay overlay rw,lowerdir=/var/lib/containerd/"
    "io.containerd.snapshotter.v1.overlayfs/snapshots/812/fs,upperdir=/var/lib/containerd/"
    "io.containerd.snapshotter.v1.overlayfs/snapshots/813/fs,workdir=/var/lib/containerd/"
    "io.containerd.snapshotter.v1.overlayfs/snapshots/813/work",
    "1467 1466 0:376 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw",
    "1468 1466 0:377 / /dev rw,nosuid - tmpfs tmpfs rw,size=65536k,mode=755",
    "1474 1468 0:372 / /dev/shm rw,nosuid,nodev,noexec,relatime - tmpfs shm rw,size=65536k",
    f"1475 1466 259:1 /var/lib/kubelet/pods/{POD_UID}/volumes/kubernetes.io~empty-dir/scratch /scratch "
    "rw,relatime - ext4 /dev/nvme0n1p1 rw",
    f"1476 1466 259:1 /var/lib/kubelet/pods/{POD_UID}/etc-hosts /etc/hosts rw,relatime - ext4 /dev/nvme0n1p1 rw",
    "1477 1466 259:3 / /var/tmp/platform rw,relatime - ext4 /dev/nvme1n1 rw",
    "1478 1466 259:4 / /srv/clusters rw,relatime - ext4 /dev/nvme2n1 rw",
    "1479 1466 0:380 / /in-memory rw,relatime - tmpfs tmpfs rw,size=1048576k",
    "1480 1466 0:90 / /srv/nfs rw,relatime - nfs4 10.0.0.5:/export/pitr rw,vers=4.1",
    "1481 1466 259:5 / /srv/kept\\040clusters rw,relatime - xfs /dev/nvme3n1 rw",
    "1482 1478 0:381 / /srv/clusters/scratch rw,relatime - tmpfs tmpfs rw",
])
IN_A_POD = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "HOSTNAME": "dagster-step-5f2a9c-x7k2p",
            "TMPDIR": "/var/tmp/platform"}


def _reason(path: str, environ: dict[str, str] = IN_A_POD) -> str | None:
    return deleted_with_the_pod(Path(path), environ=environ, mountinfo=STEP_POD_MOUNTINFO)


@pytest.mark.parametrize(("path", "deleted_by"), [
    ("/restored/pg-a", "the container's own file system (its writable layer)"),
    ("/var/tmp/platform/restored", "the step's work volume at /var/tmp/platform"),
    ("/scratch/pg-a", "an emptyDir volume at /scratch"),
    ("/in-memory/pg-a", "a memory-backed tmpfs at /in-memory"),
    ("/dev/shm/pg-a", "a memory-backed tmpfs at /dev/shm"),
    ("/srv/clusters/scratch/pg-a", "a memory-backed tmpfs at /srv/clusters/scratch"),
])
def test_storage_deleted_with_the_pod_is_named(path: str, deleted_by: str) -> None:
    reason = _reason(path)
    assert reason is not None and reason.startswith(deleted_by), reason


@pytest.mark.parametrize("path", ["/srv/clusters/pg-a", "/srv/clusters", "/srv/nfs/pg-a/new",
                                  "/srv/kept clusters/pg-a"])
def test_a_claim_mounted_at_or_above_the_target_keeps_it(path: str) -> None:
    assert _reason(path) is None


def test_outside_a_pod_nothing_is_refused() -> None:
    assert _reason("/restored/pg-a", environ={"HOSTNAME": "laptop"}) is None
    refuse_unless_kept(Path("/restored/pg-a"), "point-in-time restore of cluster pg-a", "restore_to_point_in_time",
                       environ={}, mountinfo=STEP_POD_MOUNTINFO)


def test_the_refusal_names_the_directory_what_deletes_it_the_pod_and_the_way_out() -> None:
    with pytest.raises(EphemeralTarget) as refused:
        refuse_unless_kept(Path("/var/tmp/platform/restored"), "point-in-time restore of cluster pg-a",
                           "restore_to_point_in_time", environ=IN_A_POD, mountinfo=STEP_POD_MOUNTINFO)
    message = str(refused.value)
    assert message.startswith("point-in-time restore of cluster pg-a: target directory /var/tmp/platform/restored "
                              "is on the step's work volume")
    assert "(dagster-step-5f2a9c-x7k2p)" in message
    assert "execution.config.per_step_k8s_config.restore_to_point_in_time" in message
    assert refused.value.exit_code == 2  # an invalid request, as the CLI's other refusals of a target


def test_mountinfo_paths_are_unescaped_and_the_last_of_stacked_mounts_wins() -> None:
    mounts = parse_mountinfo(STEP_POD_MOUNTINFO + "\n1483 1478 259:6 / /srv/clusters rw - ext4 /dev/nvme4n1 rw")
    assert Path("/srv/kept clusters") in [Path(m.mount_point) for m in mounts]
    found = mount_of(Path("/srv/clusters/pg-a"), mounts)
    assert found is not None and found.source == "/dev/nvme4n1"


def test_a_symlink_is_followed_to_where_the_directory_really_is(tmp_path: Path) -> None:
    """A link in a kept place pointing into the pod's own storage is judged by where it points."""
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    mountinfo = f"1 0 259:4 / / rw - overlay overlay rw\n2 1 259:5 / {link} rw - ext4 /dev/nvme2n1 rw"
    assert deleted_with_the_pod(link / "pg-a", environ=IN_A_POD, mountinfo=mountinfo) == (
        "the container's own file system (its writable layer)")
