"""Physical protection of whole clusters: base backups and continuously archived WAL in a
barman-cloud repository, point-in-time restores and PITR drills.

barman-cloud (the tools CloudNativePG's Barman Cloud plugin runs) is the data path; this package
generates its settings, runs it, reads back what it recorded and proves it. No Dagster here.
"""
