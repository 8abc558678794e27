"""A short seeded fault campaign (chaos/campaign.py, `make chaos` runs a long one): real
`platform-dr` processes SIGKILLed at random moments of backup, copies, prune, rewrap, drill
and restore, and store faults (immutable directory, store gone, full tmpfs where one can be
mounted, the S3 emulator killed mid-upload), against a real PostgreSQL server, local stores
and a moto server. After every trial nothing may be lost and nothing may be left behind."""

from __future__ import annotations

import pytest

from chaos.campaign import COMMANDS, FAULTS, run_campaign


@pytest.mark.slow
def test_a_short_seeded_campaign_finds_no_violation_and_no_leftover_and_its_checks_bite():
    trials = len(COMMANDS) + len(FAULTS) + len(COMMANDS)  # every kind once, every command twice
    report = run_campaign(trials, seed=7, rows=20_000, log=lambda line: None, canary=True)
    print(report.summary())
    assert not report.violations, report.summary()
    assert not report.leftovers, report.summary()
    kinds = {t.kind for t in report.trials}
    assert {f"kill-{c}" for c in COMMANDS} | set(FAULTS) <= kinds
    assert sum(t.killed_at is not None and not t.finished_first for t in report.trials) >= len(COMMANDS)

    # The same checks, on planted faults, find each of them.
    canary = report.canary
    assert canary is not None
    assert any("lost its newest verified copy" in v for v in canary.violations), canary
    assert any(".partial-canary" in v for v in canary.leftovers), canary  # its writer lives: kept, reported
    assert any("restore-canary" in v for v in canary.leftovers), canary
