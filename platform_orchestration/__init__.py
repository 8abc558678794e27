"""Keeps a PostgreSQL fleet recoverable across clouds: backups, copies, drills, evidence."""

__version__ = "0.1.0"
