"""A cluster meant to be kept is never brought up on storage Kubernetes deletes with the pod.

No kubelet runs here, so the pod is a double: the environment the kubelet gives every container
(KUBERNETES_SERVICE_HOST) and a /proc/self/mountinfo written the way a containerd node writes one
for a step pod of deploy/ (the container's overlay root, the work volume at /var/tmp/platform as
a CSI block device, an emptyDir on the node's disk, a memory-backed emptyDir, a
PersistentVolumeClaim on its own device, an NFS claim, a path with a space). The refusal on a
real pipeline (the restore_pitr job, seeding a standby) is in test_dagster_physical.py and
test_replication.py.

Where mountinfo shows a claim, the pod's own object decides; no Kubernetes API server runs here,
so it is read from a double: a real HTTPS server on loopback, with its own CA in the service
account's directory, answering the one path the API server would (GET
/api/v1/namespaces/NS/pods/NAME) with a Pod object, and only to the pod's bearer token.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from platform_orchestration.kube import pod_storage
from platform_orchestration.kube.pod_storage import (
    EphemeralTarget,
    deleted_with_the_pod,
    mount_of,
    parse_mountinfo,
    read_own_pod,
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


POD_TOKEN = "pod-token-never-in-a-message"
NAMESPACE = "platform-dr"


def _pod(volumes: list[dict], mounts: list[dict]) -> dict:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": IN_A_POD["HOSTNAME"], "namespace": NAMESPACE, "uid": POD_UID},
            "spec": {"volumes": [{"name": "fleet", "configMap": {"name": "platform-dr-fleet"}}, *volumes],
                     "containers": [{"name": "dagster", "image": "platform-dr:test", "volumeMounts": [
                         {"name": "fleet", "mountPath": "/etc/platform/fleet"}, *mounts]}]}}


# A step pod whose operator mounted a generic ephemeral volume at /srv/clusters, which mountinfo
# shows as it shows any claim (STEP_POD_MOUNTINFO's 1478).
EPHEMERAL_AT_CLUSTERS = _pod(
    [{"name": "pgdata", "ephemeral": {"volumeClaimTemplate": {"spec": {
        "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "500Gi"}}}}}}],
    [{"name": "pgdata", "mountPath": "/srv/clusters/"}])
CLAIM_AT_CLUSTERS = _pod([{"name": "pgdata", "persistentVolumeClaim": {"claimName": "pg-a-restored"}}],
                         [{"name": "pgdata", "mountPath": "/srv/clusters"}])


def _write_self_signed(directory: Path) -> None:
    """ca.crt (what the kubelet mounts for the pod) and server.key: a certificate for 127.0.0.1."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kubernetes")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
                   .not_valid_after(now + datetime.timedelta(hours=1))
                   .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                                  critical=False)
                   .sign(key, hashes.SHA256()))
    (directory / "ca.crt").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    (directory / "server.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))


class _ApiServer:
    """The API server's one answer this module asks for, over real TLS."""

    def __init__(self, directory: Path) -> None:
        self.pod: dict = CLAIM_AT_CLUSTERS
        self.requests: list[tuple[str, str | None]] = []
        _write_self_signed(directory)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                server.requests.append((self.path, self.headers.get("Authorization")))
                if self.headers.get("Authorization") != f"Bearer {POD_TOKEN}":
                    return self._answer(401, {"kind": "Status", "reason": "Unauthorized", "code": 401})
                if self.path != f"/api/v1/namespaces/{NAMESPACE}/pods/{IN_A_POD['HOSTNAME']}":
                    return self._answer(404, {"kind": "Status", "reason": "NotFound", "code": 404})
                return self._answer(200, server.pod)

            def _answer(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *_args) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(directory / "ca.crt", directory / "server.key")
        self.http.socket = context.wrap_socket(self.http.socket, server_side=True)
        self.environ = {**IN_A_POD, "KUBERNETES_SERVICE_HOST": "127.0.0.1",
                        "KUBERNETES_SERVICE_PORT": str(self.http.server_address[1])}
        threading.Thread(target=self.http.serve_forever, daemon=True).start()


@pytest.fixture
def api_server(tmp_path: Path) -> Iterator[tuple[_ApiServer, Path]]:
    account = tmp_path / "serviceaccount"
    account.mkdir()
    (account / "token").write_text(POD_TOKEN + "\n")
    (account / "namespace").write_text(NAMESPACE)
    server = _ApiServer(account)
    yield server, account
    server.http.shutdown()


def test_a_generic_ephemeral_volume_that_looks_like_a_claim_is_told_by_the_pods_own_object(
        api_server, monkeypatch) -> None:
    server, account = api_server
    monkeypatch.setattr(pod_storage, "SERVICE_ACCOUNT", account)  # where the kubelet would mount it
    server.pod = EPHEMERAL_AT_CLUSTERS
    with pytest.raises(EphemeralTarget) as refused:
        refuse_unless_kept(Path("/srv/clusters/pg-a"), "point-in-time restore of cluster pg-a",
                           "restore_to_point_in_time", environ=server.environ, mountinfo=STEP_POD_MOUNTINFO)
    assert server.requests == [(f"/api/v1/namespaces/{NAMESPACE}/pods/{IN_A_POD['HOSTNAME']}", f"Bearer {POD_TOKEN}")]
    message = str(refused.value)
    assert ("target directory /srv/clusters/pg-a is on the generic ephemeral volume 'pgdata' at /srv/clusters "
            "(a claim made for the pod and deleted with it)") in message
    assert POD_TOKEN not in message

    server.pod = CLAIM_AT_CLUSTERS  # the same mount, a claim the operator keeps
    kept = read_own_pod(server.environ, service_account=account)
    assert kept is not None and kept["metadata"]["uid"] == POD_UID
    assert deleted_with_the_pod(Path("/srv/clusters/pg-a"), environ=server.environ, mountinfo=STEP_POD_MOUNTINFO,
                                pod=kept) is None
    # the mountinfo rules come first: the work volume needs no request
    requests = len(server.requests)
    assert deleted_with_the_pod(Path("/var/tmp/platform/x"), environ=server.environ,
                                mountinfo=STEP_POD_MOUNTINFO) is not None
    assert len(server.requests) == requests


def test_an_emptydir_on_a_device_of_its_own_is_told_by_the_pods_object_too() -> None:
    """An emptyDir on a CSI driver's device is not under the kubelet's empty-dir path in mountinfo."""
    pod = _pod([{"name": "scratch", "emptyDir": {}}], [{"name": "scratch", "mountPath": "/srv/clusters"}])
    assert deleted_with_the_pod(Path("/srv/clusters/pg-a"), environ=IN_A_POD, mountinfo=STEP_POD_MOUNTINFO,
                                pod=pod) == "the emptyDir volume 'scratch' at /srv/clusters"


def test_when_the_pods_object_cannot_be_read_mountinfo_alone_decides(api_server, tmp_path: Path) -> None:
    server, account = api_server
    server.pod = EPHEMERAL_AT_CLUSTERS
    (account / "token").write_text("a-token-the-api-server-refuses")
    assert read_own_pod(server.environ, service_account=account) is None  # 401
    assert [auth for _, auth in server.requests] == ["Bearer a-token-the-api-server-refuses"]
    assert read_own_pod(server.environ, service_account=tmp_path / "no-token-mounted") is None
    assert read_own_pod({**server.environ, "HOSTNAME": "another-pod"}, service_account=account) is None
    untrusted = tmp_path / "untrusted"  # a CA that did not sign the server's certificate
    untrusted.mkdir()
    for name in ("token", "namespace"):
        (untrusted / name).write_text((account / name).read_text())
    _write_self_signed(untrusted)
    requests_before = len(server.requests)
    assert read_own_pod(server.environ, service_account=untrusted) is None
    assert len(server.requests) == requests_before  # no request sent, so no token, to an unverified server
    assert deleted_with_the_pod(Path("/srv/clusters/pg-a"), environ=server.environ, mountinfo=STEP_POD_MOUNTINFO,
                                pod=None) is None
