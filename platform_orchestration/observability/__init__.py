"""Seeing and telling: how recoverable each database is (per store and cloud), what to do
about it, metrics for Prometheus, and alerts to a receiver. Core code: no Dagster here."""
