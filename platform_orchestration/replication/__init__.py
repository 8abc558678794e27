"""Standby clusters in other clouds: seeded from their primary (pg_basebackup over the network with
a replication slot, or the primary's physical repository as CloudNativePG replica clusters start),
streaming with the archive as fallback, replication observed on both sides, failover drills on
throwaway copies, and the runbook's promotion and re-pointing of the old primary.

PostgreSQL's own tools are the data path (pg_basebackup, barman-cloud-restore, pg_promote,
pg_rewind); this package builds their settings from plain values, runs them and checks what they
did. No Dagster and no fleet lookups here: :mod:`platform_orchestration.replication.protection`
is the part of FleetProtection that resolves the fleet's entries and secrets into those values.
"""
