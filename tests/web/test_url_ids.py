"""A number in a URL that no database column can hold is "not found", never a 500: every
route with an ``<int:...>`` (or ``<bigint:...>``) part, each as a signed-in user of a role
that may use it, with 2^31 (one above PostgreSQL's integer), 2^63 (above any 64-bit
column) and a 20-digit number. Such a URL does not match its route (web.app.IdConverter),
so it is the app's ordinary 404: the page in the reader's language, or problem JSON. The
largest id that fits reaches the service, which answers "not found" too."""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.routing import Rule
from werkzeug.test import TestResponse

from govpki.principal import SYSTEM, Role
from tests.helpers import enrol_totp, initialised_portal
from web.app import MAX_BIGINT, MAX_ID
from web.container import Services

NEW_PASSWORD = "Altai-Gold-2024!"
_CSRF = re.compile(r'name="csrf_token"[^>]*value="([^"]+)"')
_PART = re.compile(r"<(int|bigint):(\w+)>")
_numbers = itertools.count(1)

# who may use the routes of each blueprint (the public CA and CRL files: anyone)
ROLES: dict[str, tuple[Role, str | None] | None] = {
    "ra_portal": (Role.RA_OFFICER, "650100"),
    "audit_console": (Role.SECURITY_AUDITOR, None),
    "ui": (Role.SECURITY_ADMIN, None),
    "pki": None,
    "crl": None,
}
TOO_LARGE = {"int": (MAX_ID + 1, 99999999999999999999), "bigint": (MAX_BIGINT + 1, 99999999999999999999)}
LARGEST = {"int": MAX_ID, "bigint": MAX_BIGINT}


@dataclass
class Site:
    app: Flask
    services: Services
    clients: dict[str, FlaskClient]


def csrf(page: TestResponse) -> str:
    match = _CSRF.search(page.get_data(as_text=True))
    assert match, page.get_data(as_text=True)
    return match.group(1)


def signed_in(app: Flask, services: Services, role: Role, prefecture: str | None) -> FlaskClient:
    """A new account that has replaced its one-time password and enrolled TOTP."""
    username = f"ids{next(_numbers)}"
    password = f"one-time-{username}-Wq5"
    with services.sessions() as db:
        services.accounts.create(
            db, SYSTEM, username=username, display_name=username, role=role, password=password, prefecture=prefecture
        )
        db.commit()
    client = app.test_client()

    def post(path: str, data: dict[str, str]) -> TestResponse:
        return client.post(path, data={"csrf_token": csrf(client.get(path)), **data})

    assert post("/login", {"username": username, "password": password}).headers["Location"] == "/password"
    changed = post(
        "/password", {"current_password": password, "new_password": NEW_PASSWORD, "repeat_password": NEW_PASSWORD}
    )
    assert changed.headers["Location"] == "/totp/enrol"
    enrol_totp(client)
    return client


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    with initialised_portal(tmp_path_factory.mktemp("url-ids")) as (app, services, _password):
        clients = {
            blueprint: signed_in(app, services, *who) if who else app.test_client() for blueprint, who in ROLES.items()
        }
        yield Site(app, services, clients)


def id_rules(app: Flask) -> list[Rule]:
    return sorted((r for r in app.url_map.iter_rules() if _PART.search(r.rule)), key=lambda r: r.rule)


def url_of(rule: Rule, number: int) -> str:
    """The rule's path with ``number`` for its id and a plausible value for any other part."""
    path = _PART.sub(str(number), rule.rule)
    return re.sub(r"<(?:\w+:)?(\w+)>", lambda m: "pem" if m.group(1) == "fmt" else "x", path)


def kind_of(rule: Rule) -> str:
    match = _PART.search(rule.rule)
    assert match
    return match.group(1)


def method_of(rule: Rule) -> str:
    return "GET" if rule.methods and "GET" in rule.methods else "POST"


def client_for(site: Site, rule: Rule) -> FlaskClient:
    blueprint = rule.endpoint.split(".")[0]
    assert blueprint in ROLES, f"{rule.rule}: say in ROLES who may use the routes of {blueprint}"
    return site.clients[blueprint]


def test_every_id_route_is_covered(site: Site) -> None:
    rules = id_rules(site.app)
    endpoints = {r.endpoint for r in rules}
    # the routes of the review (issue 5) and the others like them
    for endpoint in (
        "ra_portal.official",
        "ra_portal.service",
        "ra_portal.request_page",
        "ra_portal.approve",
        "ra_portal.import_page",
        "ra_portal.import_progress",
        "ra_portal.official_request",
        "audit_console.entry",
        "crl.full",
        "crl.delta",
        "pki.by_id",
        "pki.cross",
        "ui.revoke_token",
    ):
        assert endpoint in endpoints, endpoint
    assert all(client_for(site, r) is not None for r in rules)


@pytest.mark.parametrize("which", [0, 1], ids=["just-above-the-column", "20-digits"])
def test_a_number_too_large_for_the_database_is_not_found(site: Site, which: int) -> None:
    failures = []
    for rule in id_rules(site.app):
        url = url_of(rule, TOO_LARGE[kind_of(rule)][which])
        client = client_for(site, rule)
        client.set_cookie("govpki_lang", "zh_CN")
        answer = client.open(url, method=method_of(rule))
        body = answer.get_data(as_text=True)
        if answer.status_code != 404:
            failures.append(f"{method_of(rule)} {url}: {answer.status_code} {body[:200]}")
        elif answer.mimetype == "application/problem+json":
            problem = answer.get_json()
            if problem.get("status") != 404 or problem.get("code") != "http.404":
                failures.append(f"{url}: {problem}")
        elif "未找到" not in body and "不存在" not in body:
            failures.append(f"{url}: not the Chinese 404 page: {body[:300]}")
    assert not failures, "\n".join(failures)


def test_in_english_it_is_the_english_404_page(site: Site) -> None:
    client = site.clients["ra_portal"]
    client.set_cookie("govpki_lang", "en")
    try:
        page = client.get("/ra/officials/99999999999999999999")
        assert page.status_code == 404 and "Not found" in page.get_data(as_text=True)
    finally:
        client.set_cookie("govpki_lang", "zh_CN")


def test_the_largest_id_that_fits_reaches_the_service_and_is_not_found(site: Site) -> None:
    failures = []
    for rule in id_rules(site.app):
        if method_of(rule) != "GET":
            continue  # a POST without its form's CSRF token stops before the database
        url = url_of(rule, LARGEST[kind_of(rule)])
        answer = client_for(site, rule).get(url)
        if answer.status_code != 404:
            failures.append(f"GET {url}: {answer.status_code} {answer.get_data(as_text=True)[:200]}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("offset", ["99999999999999999999", str(2**63), "-1"])
def test_an_offset_no_database_can_skip_is_refused_by_name(site: Site, offset: str) -> None:
    """The same overflow in a query parameter: the API's list of certificates."""
    with site.services.sessions() as db:
        _token, secret = site.services.tokens.create(db, SYSTEM, name=f"ids-{next(_numbers)}", days=1)
        db.commit()
    answer = site.app.test_client().get(
        f"/api/v1/certificates?offset={offset}", headers={"Authorization": f"Bearer {secret}"}
    )
    assert answer.status_code == 422, answer.get_data(as_text=True)
    problem = answer.get_json()
    assert problem["code"] == "ca.bad_offset" and problem["errors"][0]["field"] == "offset"
    assert "between 0 and" in problem["detail"]
    fine = site.app.test_client().get("/api/v1/certificates?offset=0", headers={"Authorization": f"Bearer {secret}"})
    assert fine.status_code == 200
