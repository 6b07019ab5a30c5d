"""The "explain a decision" page: security administrators and auditors only; the form
shows the decision, the reason and every candidate with its checks; bad input is shown
next to its field."""

from __future__ import annotations

import html
from collections.abc import Iterator

import pytest

from govpki.principal import SYSTEM, Role
from tests.helpers import initialised_portal
from tests.web.test_ui import Portal, field_errors, signed_in, text

POLICY = {
    "subjects": [{"id": "zhang.san", "prefecture": "6501"}],
    "applications": [
        {
            "name": "e-docs",
            "roles": [
                {
                    "name": "reader",
                    "permissions": [
                        {
                            "name": "read-own-prefecture",
                            "action": "read",
                            "resource_type": "document",
                            "conditions": [{"kind": "same_prefecture_as_resource"}],
                        }
                    ],
                }
            ],
        }
    ],
    "assignments": [{"subject": "zhang.san", "application": "e-docs", "role": "reader"}],
}
ASK = "subject=zhang.san&application=e-docs&action=read&type=document&id=D-1"


@pytest.fixture(scope="module")
def portal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Portal]:
    with initialised_portal(tmp_path_factory.mktemp("explain")) as (app, services, password):
        with services.sessions() as s:
            services.policy.load(s, SYSTEM, POLICY)
            s.commit()
        yield Portal(app, services, password)


@pytest.mark.parametrize("role", [Role.SECURITY_ADMIN, Role.SECURITY_AUDITOR])
def test_explain_shows_the_decision_and_the_checks(portal: Portal, role: Role) -> None:
    client = signed_in(portal, role)
    assert client.get("/authz/explain").status_code == 200
    page = html.unescape(text(client.get(f"/authz/explain?{ASK}&attributes=" + '{"prefecture":"6502"}')))
    assert 'class="decision-deny"' in page
    assert "e-docs/reader/read-own-prefecture" in page
    assert "the subject's prefecture '6501' is not the resource's '6502'" in page
    page = html.unescape(text(client.get(f"/authz/explain?{ASK}&attributes=" + '{"prefecture":"6501"}')))
    assert 'class="decision-permit"' in page and "prefecture '6501' is the resource's" in page


def test_bad_input_is_shown_next_to_its_field(portal: Portal) -> None:
    client = signed_in(portal, Role.SECURITY_AUDITOR)
    page = text(client.get("/authz/explain?subject=zhang.san&application=E%20DOCS&action=read&type=document"))
    assert field_errors(page, "application") and "decision-" not in page
    page = text(client.get(f"/authz/explain?{ASK}&attributes=nope"))
    assert field_errors(page, "attributes")


@pytest.mark.parametrize("role", [Role.SYSTEM_ADMIN, Role.CA_OPERATOR])
def test_other_roles_get_403(portal: Portal, role: Role) -> None:
    client = signed_in(portal, role)
    assert client.get(f"/authz/explain?{ASK}").status_code == 403


def test_signed_out_is_sent_to_sign_in(portal: Portal) -> None:
    response = portal.app.test_client().get("/authz/explain")
    assert response.status_code == 302 and response.headers["Location"].startswith("/login")
