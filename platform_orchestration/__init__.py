"""Keeps a PostgreSQL fleet recoverable across clouds: backups, copies, drills, evidence."""
