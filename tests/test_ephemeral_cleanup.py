"""Throwaway clusters leave nothing on disk, wherever the server user made them live."""

from __future__ import annotations

from platform_orchestration.postgres import ephemeral_cluster


def test_an_ephemeral_cluster_leaves_no_directory_behind():
    with ephemeral_cluster(16) as cluster:
        data_dir = cluster.data_dir
        assert (data_dir / "PG_VERSION").is_file()
    assert not cluster.base_dir.exists()
