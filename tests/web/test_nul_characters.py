"""A NUL character in a query or form value is refused up front with a clear message that
names the field (PostgreSQL text cannot hold it, so it used to fail as a database error
deep in a view): a sign-in page, an RA page, an API; nothing is written."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import func, select

from authz.models import SignInFailure
from govpki.audit import AuditEntry
from tests.helpers import initialised_portal
from tests.web.test_ui import Portal, post_form, text


@pytest.fixture(scope="module")
def portal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Portal]:
    with initialised_portal(tmp_path_factory.mktemp("nul")) as (app, services, password):
        yield Portal(app, services, password)


def counts(portal: Portal) -> tuple[int, int]:
    with portal.services.sessions() as db:
        return (
            db.scalar(select(func.count()).select_from(AuditEntry)) or 0,
            db.scalar(select(func.count()).select_from(SignInFailure)) or 0,
        )


def test_a_nul_in_the_sign_in_form_names_the_field(portal: Portal) -> None:
    before = counts(portal)
    client = portal.app.test_client()
    page = post_form(client, "/login", {"username": "secadmin\x00", "password": "x"})
    assert page.status_code == 422 and "字段 username 含有 NUL 字符，不允许使用。" in text(page)
    client.get("/lang/en")
    page = post_form(client, "/login", {"username": "a", "password": "pa\x00ss"})
    assert page.status_code == 422
    assert "The field password contains a NUL character, which is not allowed." in text(page)
    assert counts(portal) == before


def test_a_nul_in_a_query_is_refused_on_pages_and_apis(portal: Portal) -> None:
    before = counts(portal)
    client = portal.app.test_client()
    page = client.get("/ra/officials?q=%00")
    assert page.status_code == 422 and "字段 q 含有 NUL 字符" in text(page)
    api = client.get("/api/v1/certificates?status=issued%00")
    assert api.status_code == 422 and api.mimetype == "application/problem+json"
    body = api.get_json()
    assert body["code"] == "govpki.nul_character" and body["errors"][0]["field"] == "status"
    assert counts(portal) == before
