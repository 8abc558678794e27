"""Server binaries must run as `nobody` when we are root, wherever the project was cloned."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

import pytest

from platform_orchestration.postgres.binaries import PgInstall, server_install
from platform_orchestration.postgres.cluster import ClusterError, _install_reachable_by_unprivileged


def _hidden_install(tmp_path) -> tuple[PgInstall, PgInstall]:
    """(the real install, a copy of it, shared libraries included, under a 0700 directory)."""
    original = server_install(16)
    prefix = original.bindir.parent
    package = prefix.parent
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    shutil.copytree(prefix, private / package.name / prefix.name, symlinks=True)
    libs = package.parent / f"{package.name}.libs"
    if libs.is_dir():
        shutil.copytree(libs, private / libs.name, symlinks=True)
    return original, PgInstall(original.major, original.version, private / package.name / prefix.name / "bin")


@pytest.mark.skipif(os.geteuid() != 0, reason="the mirror only exists for root")
def test_binaries_in_a_private_directory_are_mirrored_with_their_shared_libraries(tmp_path):
    """A clone under a 0700 directory (mktemp -d, /root): `nobody` cannot reach the wheel's
    binaries, and the mirror must keep the RPATH layout that finds `<package>.libs`."""
    original, hidden = _hidden_install(tmp_path)

    reachable = _install_reachable_by_unprivileged(hidden)

    assert reachable.bindir != hidden.bindir
    result = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                             reachable.tool("initdb"), "--version"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert original.version in result.stdout


@pytest.mark.skipif(os.geteuid() != 0, reason="the mirror only exists for root")
def test_a_mirror_the_server_user_cannot_run_either_is_an_error_naming_the_temporary_directory(
        tmp_path, monkeypatch):
    """TMPDIR itself private too (a 0700 scratch): the mirror made there is no better, and the
    error says so, naming it, instead of initdb failing later on a library it cannot load."""
    _, hidden = _hidden_install(tmp_path)
    private_tmp = tmp_path / "private-tmp"
    private_tmp.mkdir(mode=0o700)
    monkeypatch.setattr(tempfile, "tempdir", str(private_tmp))

    with pytest.raises(ClusterError) as raised:
        _install_reachable_by_unprivileged(hidden)

    message = str(raised.value)
    assert f"in {private_tmp}/platform-orchestration-pg-16" in message
    assert f"the temporary directory ({private_tmp})" in message and "set TMPDIR" in message
    assert "cannot be run by the server's user" in message


@pytest.mark.skipif(os.geteuid() != 0, reason="the stand-in only exists for root")
def test_a_cluster_asked_for_in_a_private_directory_runs_in_a_reachable_stand_in(tmp_path):
    from platform_orchestration.postgres.cluster import free_port, local_cluster

    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    cluster = local_cluster(private / "clusters" / "pg", free_port(), min_major=16)
    try:
        cluster.ensure_running()
        assert cluster.is_running()
        assert not str(cluster.base_dir).startswith(str(private))
        assert local_cluster(private / "clusters" / "pg", cluster.port).base_dir == cluster.base_dir
    finally:
        cluster.stop()
        shutil.rmtree(cluster.base_dir, ignore_errors=True)
