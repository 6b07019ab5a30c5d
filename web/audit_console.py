"""The auditors' console (security auditors only): search the audit log, one entry in
full, the verification badge and "verify now", charts, and the signed evidence export
for the current filter.

Thin views: parse, call one service with the acting principal, render. Every service
method checks the auditor role itself; a 403 comes from there. Charts are inline SVG
drawn by the server (no JavaScript; the network has no internet access).
"""

from __future__ import annotations

import functools
import json
import logging
from typing import Any

from flask import Blueprint, Response, flash, g, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from flask_babel import get_locale
from flask_babel import lazy_gettext as _l
from sqlalchemy import select

from authz.console import (
    AuditFilter,
    Bar,
    application_of,
    changes_of,
    details_of,
    prefecture_of,
)
from govpki.audit import AuditCheckpoint
from govpki.errors import InvalidError
from web.container import Services
from web.forms import ActionForm
from web.ui import _, _user, field_message, login_required, services

bp = Blueprint("audit_console", __name__, url_prefix="/audit")
log = logging.getLogger("govpki.web")

FILTER_FIELDS = ("since", "until", "actor", "action", "outcome", "prefecture", "application")
OUTCOMES = {"success": _l("success"), "failure": _l("failure")}
CHART_WIDTH = 720
CHART_HEIGHT = 180


def _filter_from(values: Any) -> tuple[AuditFilter, dict[str, str]]:
    """The filter from form values, and the error message per field (empty when valid)."""
    params = {name: values.get(name, "") for name in FILTER_FIELDS}
    try:
        return AuditFilter.from_params(params), {}
    except InvalidError as error:
        return AuditFilter(), {p.field or "filter": field_message(p.reason) for p in error.problems}


def _seq_arg(name: str) -> int | None:
    raw = request.args.get(name, "").strip()
    if not raw:
        return None
    if not raw.isdigit():
        raise InvalidError("must be an entry number", field=name)
    return int(raw)


def _badge() -> Any:
    user = _user()
    return services().audit_console.latest_verification(g.db, user.principal)


def _form_values() -> dict[str, str]:
    return {name: request.args.get(name, "") for name in FILTER_FIELDS}


@bp.get("")
@login_required
def search() -> ResponseReturnValue:
    user = _user()
    svc = services()
    verification = _badge()  # checks the role first: nothing else is read for other roles
    flt, errors = _filter_from(request.args)
    page = None
    if not errors:
        page = svc.audit_console.search(g.db, user.principal, flt, before=_seq_arg("before"), after=_seq_arg("after"))
    entries = page.entries if page else []
    certificates = svc.audit_console.certificate_prefectures(g.db, user.principal, entries)
    rows = [
        {"entry": e, "prefecture": prefecture_of(e, certificates), "application": application_of(e)} for e in entries
    ]
    query = flt.to_params() if not errors else {}
    return render_template(
        "audit/search.html",
        values=_form_values(),
        errors=errors,
        rows=rows,
        page=page,
        query=query,
        verification=verification,
        action=ActionForm(),
        prefectures=svc.regions.list(g.db),
        outcomes=OUTCOMES,
        max_entries=svc.evidence.max_entries,
    ), 422 if errors else 200


@bp.get("/entries/<bigint:seq>")
@login_required
def entry(seq: int) -> ResponseReturnValue:
    user = _user()
    verification = _badge()
    console = services().audit_console
    found = console.entry(g.db, user.principal, seq)
    details = details_of(found)
    certificates = console.certificate_prefectures(g.db, user.principal, [found])
    return render_template(
        "audit/entry.html",
        entry=found,
        details_pretty=json.dumps(details, ensure_ascii=False, indent=2, sort_keys=True),
        changes=changes_of(details),
        prefecture=prefecture_of(found, certificates),
        application=application_of(found),
        outcomes=OUTCOMES,
        verification=verification,
        action=ActionForm(),
    )


@bp.post("/verify")
@login_required
def verify() -> ResponseReturnValue:
    user = _user()
    report = services().audit_console.verify_now(g.db, user.principal)
    if report.ok:
        flash(
            _(
                "The audit log verifies: %(entries)d entries, %(checkpoints)d signed checkpoints.",
                entries=report.entries,
                checkpoints=report.checkpoints,
            ),
            "success",
        )
    else:
        flash(_("The audit log does NOT verify: %(summary)s", summary=report.summary), "warning")
    target = request.form.get("next", "")
    return redirect(target if target.startswith("/audit") and "//" not in target else url_for(".search"))


@bp.post("/export")
@login_required
def export() -> ResponseReturnValue:
    user = _user()
    flt, errors = _filter_from(request.form)
    if errors:
        field, message = next(iter(errors.items()))
        raise InvalidError(f"{field}: {message}", field=field)
    bundle = services().evidence.export(g.db, user.principal, flt)
    name = f"audit-evidence-{bundle.first_seq}-{bundle.last_seq}.tar"
    response = Response(bundle.data, mimetype="application/x-tar")
    response.headers["Content-Disposition"] = f'attachment; filename="{name}"'
    response.headers["X-Bundle-SHA256"] = bundle.bundle_sha256
    response.headers["Cache-Control"] = "no-store"
    if bundle.checkpoint is not None:
        response.call_on_close(functools.partial(_export_checkpoint, services(), bundle.checkpoint.seq))
    return response


def _export_checkpoint(svc: Services, seq: int) -> None:
    """After the request (and its commit): append the checkpoint the export signed to the
    checkpoint file, as the job does — only if it was committed, so the file never holds a
    checkpoint the database lacks."""
    try:
        with svc.sessions() as db:
            made = db.scalar(select(AuditCheckpoint).where(AuditCheckpoint.seq == seq))
            if made is not None:
                svc.auditing.export(made)
    except Exception:  # the download is done; the next checkpoint is exported by the job
        log.exception("the audit checkpoint at entry %d was not exported", seq)


# ----- charts --------------------------------------------------------------------------


def bar_chart(
    bars: list[Bar], *, width: int = CHART_WIDTH, height: int = CHART_HEIGHT, label_every: int = 1
) -> dict[str, Any]:
    """Geometry of a bar chart (drawn as SVG by templates/audit/charts.html); every bar
    has its value above it and a tooltip, every ``label_every``-th its label below."""
    top = max((b.value for b in bars), default=0) or 1
    slot = width / max(len(bars), 1)
    plot = height - 34  # room for the value above and the label below
    out = []
    for i, b in enumerate(bars):
        h = round(plot * b.value / top, 1)
        out.append(
            {
                "label": b.label,
                "show_label": i % label_every == 0,
                "value": b.value,
                "x": round(i * slot + slot * 0.15, 1),
                "w": round(slot * 0.7, 1),
                "y": round(14 + plot - h, 1),
                "h": h,
                "cx": round(i * slot + slot / 2, 1),
            }
        )
    return {"bars": out, "width": width, "height": height, "base": 14 + plot}


def paired_chart(days: list[tuple[str, int, int]], *, width: int = CHART_WIDTH) -> dict[str, Any]:
    """Issued and revoked side by side per day."""
    height = CHART_HEIGHT
    top = max((max(d[1], d[2]) for d in days), default=0) or 1
    slot = width / max(len(days), 1)
    plot = height - 34
    out = []
    for i, (label, issued, revoked) in enumerate(days):
        hi = round(plot * issued / top, 1)
        hr = round(plot * revoked / top, 1)
        x = i * slot
        out.append(
            {
                "label": label[5:],  # MM-DD
                "issued": issued,
                "revoked": revoked,
                "xi": round(x + slot * 0.1, 1),
                "xr": round(x + slot * 0.5, 1),
                "w": round(slot * 0.4, 1),
                "yi": round(14 + plot - hi, 1),
                "yr": round(14 + plot - hr, 1),
                "hi": hi,
                "hr": hr,
                "ci": round(x + slot * 0.3, 1),
                "cr": round(x + slot * 0.7, 1),
                "cx": round(x + slot / 2, 1),
            }
        )
    return {"bars": out, "width": width, "height": height, "base": 14 + plot}


@bp.get("/charts")
@login_required
def charts() -> ResponseReturnValue:
    user = _user()
    svc = services()
    verification = _badge()
    principal = user.principal
    per_day = svc.certificate_stats.per_day(g.db, principal)
    sign_ins = svc.audit_console.failed_sign_ins_per_hour(g.db, principal)
    pending = svc.certificate_stats.pending_by_age(g.db, principal)
    english = str(get_locale() or "").startswith("en")
    names = {
        ra.prefecture_code: f"{ra.prefecture.name_en if english else ra.prefecture.name} ({ra.prefecture_code})"
        for ra in svc.regions.list(g.db)
    }
    return render_template(
        "audit/charts.html",
        verification=verification,
        action=ActionForm(),
        issuance=[
            (names.get(group.group, group.group), group.issued, group.revoked, paired_chart(group.days))
            for group in per_day
        ],
        sign_ins=bar_chart(sign_ins, label_every=3),
        sign_in_total=sum(b.value for b in sign_ins),
        pending=bar_chart([Bar(label, n) for label, n in pending], width=480),
        pending_total=sum(n for _label, n in pending),
    )
