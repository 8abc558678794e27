"""The recoverability report: one self-contained HTML page, and the JSON it is made from, per
compliance run, written beside the compliance evidence in every store.

For the security team as much as the platform team: per database, the verdict and each
finding; each copy per cloud with its age against the RPO, encryption and write-once
retention; the last drill per cloud with its measured RTO against the target; the retention
policy; charts of drill RTO over time per cloud and copy age per cloud. Every figure names
the backup, drill, evidence and run it comes from (in the cell, or in the chart mark's title),
so an auditor can go from the page to the manifest or drill record in any store.

The page has no script, no stylesheet or font from elsewhere: it opens from a bucket, a
laptop, or an air-gapped review machine exactly the same.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from html import escape

from platform_orchestration.backups.catalog import record_everywhere
from platform_orchestration.backups.compliance import ComplianceEvidence
from platform_orchestration.observability.recoverability import DatabaseRecoverability
from platform_orchestration.reporting.charts import copy_age_chart, drill_rto_chart, human_seconds
from platform_orchestration.storage import ObjectStore

REPORTS_PREFIX = "evidence/reports/"


def report_keys(evidence_id: str) -> tuple[str, str]:
    """The HTML and JSON keys of the report of one compliance run."""
    return f"{REPORTS_PREFIX}{evidence_id}/report.html", f"{REPORTS_PREFIX}{evidence_id}/report.json"


@dataclass(frozen=True)
class RecoverabilityReport:
    evidence_id: str
    html_key: str
    json_key: str
    html: str = field(repr=False)
    json_text: str = field(repr=False)
    stored_in: tuple[str, ...] = ()
    failed_stores: dict[str, str] = field(default_factory=dict)
    locations: tuple[str, ...] = ()  # where a reader can open the HTML (file:// for local stores)


def report_document(views: Sequence[DatabaseRecoverability], *, evidence_id: str, evidence_key: str,
                    generated_at: datetime, fleet_file: str, run_id: str | None) -> dict:
    return {
        "report": "recoverability", "format_version": 1,
        "evidence_id": evidence_id, "evidence_key": evidence_key, "run_id": run_id,
        "generated_at": generated_at.isoformat(), "fleet_file": fleet_file,
        "compliant": sum(v.verdict for v in views), "databases_total": len(views),
        "databases": [v.to_dict() for v in views],
    }


_STYLE = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:2rem auto;max-width:1180px;
color:#111;padding:0 1rem}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{margin-top:2.4rem;border-bottom:2px solid #ddd;padding-bottom:.3rem}
h3{font-size:1rem;margin:1.2rem 0 .4rem}.meta{color:#555;font-size:.9rem}
table{border-collapse:collapse;width:100%;font-size:.86rem;margin:.3rem 0 .8rem}
th,td{border:1px solid #ddd;padding:.3rem .45rem;text-align:left;vertical-align:top;overflow-wrap:anywhere}th{background:#f5f5f5}
.verdict{display:inline-block;padding:.15rem .6rem;border-radius:.3rem;font-weight:700;color:#fff}
.pass{background:#15803d}.fail{background:#b91c1c}.ok{color:#15803d;font-weight:600}
.bad{color:#b91c1c;font-weight:600}code{font-size:.8rem;background:#f3f4f6;padding:0 .2rem}
.charts{display:flex;flex-wrap:wrap;gap:1.5rem}.charts figure{margin:0}
figcaption{font-size:.85rem;color:#444;margin-bottom:.2rem}
"""


def _cell(text: object, css: str = "") -> str:
    return f'<td class="{css}">{escape(str(text))}</td>' if css else f"<td>{escape(str(text))}</td>"


def _ok(passed: bool, yes: str = "ok", no: str = "FAIL") -> str:
    return f'<td class="{"ok" if passed else "bad"}">{yes if passed else no}</td>'


def _database_section(v: DatabaseRecoverability) -> str:
    verdict = "COMPLIANT" if v.verdict else "NOT COMPLIANT"
    out = [f'<section class="database" id="db-{escape(v.database)}" data-database="{escape(v.database)}">',
           f'<h2>{escape(v.database)} <span class="verdict {"pass" if v.verdict else "fail"}">{verdict}</span></h2>',
           f'<p class="meta">cluster {escape(v.cluster)} &middot; policy {escape(v.policy)} &middot; '
           f"RPO {escape(human_seconds(v.rpo_target_seconds))} &middot; RTO target "
           f"{escape(human_seconds(v.rto_target_seconds))} &middot; drilled every "
           f"{escape(human_seconds(v.drill_every_seconds))} &middot; retention {escape(v.retention)}</p>"]
    if v.latest is not None:
        age = v.latest_age_seconds or 0.0
        out.append(f'<p>Newest backup <code class="backup-id">{escape(v.latest.backup_id)}</code>: '
                   f"{escape(human_seconds(age))} old "
                   f'<span class="{"bad" if v.stale else "ok"}">({"over" if v.stale else "within"} the RPO)</span>, '
                   f"{v.latest.raw_bytes:,} bytes dumped, {v.latest.stored_bytes:,} stored, "
                   f"taken in {escape(human_seconds(v.latest.duration_seconds))}.</p>")
    else:
        out.append('<p class="bad">No readable backup in any required store.</p>')

    out.append('<h3>Findings</h3><table class="findings"><tr><th>check</th><th>result</th><th>detail</th></tr>')
    for f in v.assessment.findings:
        out.append(f'<tr data-check="{escape(f.check)}">{_cell(f.check)}{_ok(f.passed)}{_cell(f.detail)}</tr>')
    out.append("</table>")

    out.append('<h3>Copies per cloud</h3><table class="copies"><tr><th>store</th><th>cloud</th>'
               "<th>newest backup held</th><th>age / RPO</th><th>holds the latest</th><th>encryption</th>"
               "<th>immutability</th><th>verified</th></tr>")
    for c in v.copies:
        n = c.newest
        if n is None:
            why = f"unreachable: {c.unreachable}" if c.unreachable else "no backup"
            out.append(f'<tr data-store="{escape(c.store)}">{_cell(c.store)}{_cell(c.cloud)}'
                       f'<td class="bad" colspan="6">{escape(why)}</td></tr>')
            continue
        age = c.age_seconds or 0.0
        age_css = "bad" if age > v.rpo_target_seconds else "ok"
        verified = (n.verified_at.isoformat(timespec="seconds") if n.verified_at else "-") + (
            f" (copied from {n.copied_from})" if n.copied_from else "")
        out.append(
            f'<tr data-store="{escape(c.store)}" data-backup-id="{escape(n.backup_id)}">{_cell(c.store)}'
            f"{_cell(c.cloud)}<td><code>{escape(n.backup_id)}</code></td>"
            f'<td class="{age_css}">{escape(human_seconds(age))} / {escape(human_seconds(v.rpo_target_seconds))}</td>'
            f"{_ok(c.holds_latest, 'yes', 'NO')}"
            + (_cell(n.encryption) if n.encryption else '<td class="bad">not encrypted</td>')
            + _cell(c.immutability or "none") + _cell(verified) + "</tr>")
    out.append("</table>")

    out.append('<h3>Last drill per cloud</h3><table class="drills"><tr><th>store</th><th>cloud</th><th>drill</th>'
               "<th>backup</th><th>finished</th><th>result</th><th>RTO / target</th><th>RPO at drill</th></tr>")
    for c in v.copies:
        d = v.last_drill_from(c.store)
        if d is None:
            out.append(f'<tr data-store="{escape(c.store)}">{_cell(c.store)}{_cell(c.cloud)}'
                       '<td colspan="6" class="bad">never drilled from this store</td></tr>')
            continue
        rto = "-" if d.rto_seconds is None else human_seconds(d.rto_seconds)
        rto_css = "ok" if d.rto_seconds is not None and d.rto_seconds <= d.rto_target_seconds else "bad"
        out.append(
            f'<tr data-store="{escape(c.store)}" data-drill-id="{escape(d.drill_id)}">{_cell(c.store)}{_cell(d.cloud)}'
            f"<td><code>{escape(d.drill_id)}</code></td><td><code>{escape(d.backup_id or '-')}</code></td>"
            f"{_cell(d.finished_at.isoformat(timespec='seconds'))}"
            + (_ok(True, "passed") if d.passed else f'<td class="bad">FAILED: {escape(d.failure or "")}</td>')
            + f'<td class="{rto_css}">{escape(rto)} / {escape(human_seconds(d.rto_target_seconds))}</td>'
            + _cell("-" if d.rpo_seconds is None else human_seconds(d.rpo_seconds)) + "</tr>")
    out.append("</table>")

    out.append('<div class="charts">'
               f'<figure><figcaption>Drill RTO over time per cloud ({len(v.drills)} drills)</figcaption>'
               f"{drill_rto_chart(v.drills, v.rto_target_seconds)}</figure>"
               f"<figure><figcaption>Copy age per cloud</figcaption>"
               f"{copy_age_chart(v.copies, v.rpo_target_seconds)}</figure></div>")
    if v.unreadable:
        out.append('<h3>Unreadable objects</h3><ul class="unreadable">'
                   + "".join(f"<li>{escape(u.describe())}</li>" for u in v.unreadable) + "</ul>")
    out.append("</section>")
    return "".join(out)


def render_html(views: Sequence[DatabaseRecoverability], document: dict) -> str:
    compliant, total = document["compliant"], document["databases_total"]
    run_id = document["run_id"]
    run = f' &middot; Dagster run <code class="run-id">{escape(run_id)}</code>' if run_id else ""
    summary_rows = "".join(
        f'<tr>{_cell(v.database)}{_cell(v.cluster)}{_cell(v.policy)}{_ok(v.verdict, "compliant", "NOT COMPLIANT")}'
        f"{_cell(human_seconds(v.latest_age_seconds) if v.latest_age_seconds is not None else 'no backup')}"
        f"{_cell(', '.join(v.missing_copies) or '-')}"
        f"{_cell(('passed' if v.last_drill.passed else 'FAILED') if v.last_drill else 'never')}</tr>"
        for v in views)
    return (
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>Recoverability report {escape(document['evidence_id'])}</title><style>{_STYLE}</style></head><body>"
        f"<h1>PostgreSQL fleet recoverability</h1>"
        f'<p class="meta">Generated {escape(document["generated_at"])} &middot; compliance evidence '
        f'<code class="evidence-id">{escape(document["evidence_id"])}</code> '
        f'(<code>{escape(document["evidence_key"])}</code>){run} &middot; fleet {escape(document["fleet_file"])}</p>'
        f'<p class="summary"><strong>{compliant} of {total}</strong> databases compliant.</p>'
        '<table class="summary-table"><tr><th>database</th><th>cluster</th><th>policy</th><th>verdict</th>'
        f"<th>newest backup age</th><th>copies missing in</th><th>latest drill</th></tr>{summary_rows}</table>"
        + "".join(_database_section(v) for v in views)
        + '<p class="meta">Ages are the worker\'s clock at the assessment minus the backup\'s snapshot time on the '
          "worker's clock. Each id names an object in every store: backups/&lt;db&gt;/&lt;backup id&gt;/manifest.json, "
          "drills/&lt;db&gt;/&lt;drill id&gt;.json, evidence/compliance/&lt;evidence id&gt;.json.</p>"
        "</body></html>")


def _location(store: ObjectStore, key: str) -> str:
    root = getattr(store, "root", None)
    return (root / key).resolve().as_uri() if root is not None else f"{store.name}:{key}"


def record_report(views: Sequence[DatabaseRecoverability], stores: Sequence[ObjectStore], *,
                  evidence: ComplianceEvidence, fleet_file: str, run_id: str | None = None) -> RecoverabilityReport:
    """Render the report of one compliance run (`views` made at its `generated_at`) and write
    the HTML and the JSON into every one of `stores`. Raises StoreError only if no store got it."""
    html_key, json_key = report_keys(evidence.evidence_id)
    document = report_document(views, evidence_id=evidence.evidence_id, evidence_key=evidence.key,
                               generated_at=evidence.generated_at, fleet_file=fleet_file, run_id=run_id)
    json_text = json.dumps(document, indent=2, default=str)
    html = render_html(views, document)
    recorded_json = record_everywhere(stores, json_key, json_text.encode(), f"report {evidence.evidence_id} (JSON)")
    recorded_html = record_everywhere([s for s in stores if s.name in recorded_json.stored_in], html_key,
                                      html.encode(), f"report {evidence.evidence_id} (HTML)")
    failed = {**recorded_json.failed, **recorded_html.failed}
    return RecoverabilityReport(
        evidence.evidence_id, html_key, json_key, html, json_text, recorded_html.stored_in, failed,
        tuple(_location(s, html_key) for s in stores if s.name in recorded_html.stored_in))
