"""CRLs over HTTP at the distribution points, and the crl CLI commands."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from cryptography import x509
from flask.testing import FlaskClient
from sqlalchemy import delete, func, select
from werkzeug.http import parse_date

from ca.models import CaKind, CrlKind, CrlRecord
from govpki.principal import SYSTEM
from tests.helpers import csr_pem
from tests.web.test_cli import run
from web.container import Services


def _ids(services: Services) -> tuple[int, int]:
    with services.sessions() as session:
        return services.ca.active_ca(session, CaKind.ROOT).id, services.ca.active_ca(session, CaKind.ISSUING).id


def test_full_crl_is_served_at_the_certificates_distribution_point(client: FlaskClient, services: Services) -> None:
    _root_id, issuing_id = _ids(services)
    with services.sessions() as session:
        record = services.ca.issue(session, SYSTEM, profile="service-tls-server", csr=csr_pem())
        session.commit()
    assert record.cert_der is not None
    cdp = x509.load_der_x509_certificate(record.cert_der).extensions.get_extension_for_class(x509.CRLDistributionPoints)
    url = cdp.value[0].full_name[0].value
    path = url.removeprefix(services.config.base_url)
    assert path == f"/crl/{issuing_id}.crl"

    response = client.get(path)
    assert response.status_code == 200
    assert response.mimetype == "application/pkix-crl"
    crl = x509.load_der_x509_crl(response.data)
    with services.sessions() as session:
        latest = services.crl.latest(session, issuing_id, CrlKind.FULL)
        assert latest is not None and latest.der == response.data
    now = dt.datetime.now(dt.UTC)
    max_age = int(response.headers["Cache-Control"].removeprefix("public, max-age="))
    assert abs(max_age - (crl.next_update_utc - now).total_seconds()) < 5
    assert parse_date(response.headers["Expires"]) == crl.next_update_utc
    assert parse_date(response.headers["Last-Modified"]) == crl.last_update_utc
    assert response.headers["ETag"] == f'"{latest.sha256}"'

    again = client.get(path, headers={"If-None-Match": response.headers["ETag"]})
    assert again.status_code == 304 and not again.data


def test_delta_is_made_on_demand_and_the_root_serves_its_arl(client: FlaskClient, services: Services) -> None:
    root_id, issuing_id = _ids(services)
    delta = client.get(f"/crl/{issuing_id}-delta.crl")
    assert delta.status_code == 200 and delta.mimetype == "application/pkix-crl"
    assert x509.load_der_x509_crl(delta.data).extensions.get_extension_for_class(x509.DeltaCRLIndicator)
    with services.sessions() as session:  # the request committed it (and its audit entry)
        assert services.crl.latest(session, issuing_id, CrlKind.DELTA) is not None
    assert client.get(f"/crl/{issuing_id}-delta.crl").data == delta.data  # served, not re-made
    with services.sessions() as session:
        newer = services.crl.generate(session, SYSTEM, issuing_id, CrlKind.DELTA)
        session.commit()
        newer_der = newer.der
    assert client.get(f"/crl/{issuing_id}-delta.crl").data == newer_der  # the newest, not a cached one

    arl = client.get(f"/crl/{root_id}.crl")
    assert arl.status_code == 200
    assert x509.load_der_x509_crl(arl.data).extensions.get_extension_for_class(x509.IssuingDistributionPoint)
    no_delta = client.get(f"/crl/{root_id}-delta.crl")
    assert no_delta.status_code == 404 and no_delta.mimetype == "application/problem+json"
    assert no_delta.json is not None and no_delta.json["errors"][0]["field"] == "ca"


def test_unknown_ca_and_missing_arl_are_404_problems(client: FlaskClient, services: Services) -> None:
    root_id, _issuing_id = _ids(services)
    unknown = client.get("/crl/999.crl")
    assert unknown.status_code == 404 and unknown.mimetype == "application/problem+json"
    assert unknown.json is not None and "no CA with id 999" in unknown.json["detail"]
    assert client.get("/crl/abc.crl").mimetype == "application/problem+json"
    with services.sessions() as session:
        session.execute(delete(CrlRecord).where(CrlRecord.ca_id == root_id))
        session.commit()
    missing = client.get(f"/crl/{root_id}.crl")
    assert missing.status_code == 404 and missing.json is not None
    assert missing.json["code"] == "ca.no_arl" and "ceremony" in missing.json["detail"]
    with services.sessions() as session:  # nothing was generated for the root
        assert session.scalar(select(func.count()).select_from(CrlRecord).where(CrlRecord.ca_id == root_id)) == 0


def test_cli_generate_and_show(services: Services, tmp_path: Path) -> None:
    root_id, issuing_id = _ids(services)
    out = tmp_path / "full.pem"
    result = run(services, "crl", "generate", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "full CRL" in result.output and "entries      0" in result.output
    full = x509.load_pem_x509_crl(out.read_bytes())
    number = full.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    assert f"number       {number}" in result.output

    delta_out = tmp_path / "delta.crl"
    result = run(services, "crl", "generate", "--ca", str(issuing_id), "--delta", "--out", str(delta_out))
    assert result.exit_code == 0, result.output
    assert f"base number  {number}" in result.output
    x509.load_der_x509_crl(delta_out.read_bytes())

    result = run(services, "crl", "generate", "--root")
    assert result.exit_code == 0 and "ARL" in result.output, result.output
    result = run(services, "crl", "show", "--delta")
    assert result.exit_code == 0 and f"/crl/{issuing_id}-delta.crl" in result.output
    result = run(services, "crl", "show", "--ca", str(root_id))
    assert result.exit_code == 0 and "ARL" in result.output

    refused = run(services, "crl", "generate", "--root", "--delta")
    assert refused.exit_code == 2 and "kind:" in refused.output and "only a full CRL" in refused.output
    assert run(services, "crl", "show", "--ca", "999").exit_code == 2


def test_cli_progress_bar_opens_only_for_large_lists() -> None:
    from web import cli

    progress = cli._CrlProgress()
    progress(10, 100)
    assert progress._bar is None
    progress(10_000, 20_000)
    assert progress._bar is not None
    progress(20_000, 20_000)
    progress.close()
    assert progress._bar is None
