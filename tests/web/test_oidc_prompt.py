"""``prompt`` and ``max_age`` at the authorization endpoint (OpenID Connect Core 1.0
§3.1.2.1, §3.1.2.6) through Flask's test client: ``prompt=none`` never shows a page,
``prompt=login`` and an exceeded ``max_age`` end the session and ask for a new sign-in,
and an unknown client or redirect URI is still an error page, never a redirect."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import pytest
from flask.testing import FlaskClient
from sqlalchemy import update
from werkzeug.test import TestResponse

from authz.models import Account
from tests.helpers import initialised_portal, totp_code
from tests.web.oidc_helpers import register_client, two_factor_client
from tests.web.test_oidc import REDIRECT, authorize, code_of
from tests.web.test_ui import NEW_PASSWORD as PASSWORD
from tests.web.test_ui import SECRETS, Portal, new_account, post_form, sign_in

_names = itertools.count(1)


@pytest.fixture(scope="module")
def portal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Portal]:
    with initialised_portal(tmp_path_factory.mktemp("oidc-prompt")) as (app, services, password):
        yield Portal(app, services, password)


@pytest.fixture(scope="module")
def client_id(portal: Portal) -> str:
    found, _secret = register_client(portal, f"prompt-rp-{next(_names)}")
    return found


def error_of(response: TestResponse) -> dict[str, list[str]]:
    """The error the client gets at its redirect URI (with the request's state)."""
    assert response.status_code == 302, response.get_data(as_text=True)
    location = response.headers["Location"]
    assert location.startswith(REDIRECT + "?"), location
    params = parse_qs(urlsplit(location).query)
    assert params["state"] == ["state-1"]
    assert "code" not in params
    return params


def is_signed_in(client: FlaskClient) -> bool:
    return client.get("/dashboard").status_code == 200


def test_prompt_none_without_a_session_is_login_required_at_the_client(portal: Portal, client_id: str) -> None:
    response = authorize(portal.app.test_client(), client_id, prompt="none")
    assert error_of(response)["error"] == ["login_required"]


def test_prompt_none_with_a_session_issues_a_code(portal: Portal, client_id: str) -> None:
    client, _username = two_factor_client(portal)
    assert code_of(authorize(client, client_id, prompt="none"))


def test_prompt_none_with_max_age_exceeded_is_login_required(portal: Portal, client_id: str) -> None:
    client, _username = two_factor_client(portal)
    with client.session_transaction() as session:
        session["auth_time"] = int(session["auth_time"]) - 600  # signed in ten minutes ago
    assert error_of(authorize(client, client_id, prompt="none", max_age="300"))["error"] == ["login_required"]
    assert is_signed_in(client)  # prompt=none shows nothing and ends nothing
    assert code_of(authorize(client, client_id, prompt="none", max_age="900"))


def test_prompt_none_with_another_value_is_invalid_request(portal: Portal, client_id: str) -> None:
    client, _username = two_factor_client(portal)
    for prompt in ("none login", "consent none"):
        assert error_of(authorize(client, client_id, prompt=prompt))["error"] == ["invalid_request"]
    anonymous = portal.app.test_client()
    assert error_of(authorize(anonymous, client_id, prompt="none login"))["error"] == ["invalid_request"]


def test_bad_max_age_is_invalid_request(portal: Portal, client_id: str) -> None:
    client, _username = two_factor_client(portal)
    for value in ("-1", "soon", "1.5", "１０"):
        assert error_of(authorize(client, client_id, max_age=value))["error"] == ["invalid_request"]


def test_prompt_none_never_redirects_to_an_unknown_client_or_uri(portal: Portal, client_id: str) -> None:
    anonymous = portal.app.test_client()
    unknown = authorize(anonymous, "app_doesnotexist", prompt="none")
    assert unknown.status_code == 400 and "Location" not in unknown.headers
    assert "invalid_client" in unknown.get_data(as_text=True)
    for uri in ("https://evil.example.com/callback", REDIRECT + "/"):
        wrong = authorize(anonymous, client_id, prompt="none", redirect_uri=uri)
        assert wrong.status_code == 400 and "Location" not in wrong.headers
        assert "invalid_request" in wrong.get_data(as_text=True)


def test_without_prompt_an_anonymous_user_goes_to_the_sign_in_page(portal: Portal, client_id: str) -> None:
    response = authorize(portal.app.test_client(), client_id)
    assert response.status_code == 302 and response.headers["Location"].startswith("/login?next=")


def _sign_in_again(portal: Portal, client: FlaskClient, username: str, login_page: str) -> TestResponse:
    """Password and TOTP again (the test forgets the step the first sign-in used, as the
    next 30-second step would), following the sign-in page's ``next``."""
    with portal.services.sessions() as db:
        db.execute(update(Account).where(Account.username == username).values(totp_last_step=None))
        db.commit()
    step = post_form(client, login_page, {"username": username, "password": PASSWORD})
    assert step.headers["Location"] == "/login/totp", step.get_data(as_text=True)
    done = post_form(client, "/login/totp", {"code": totp_code(SECRETS[username])})
    assert done.status_code == 302, done.get_data(as_text=True)
    return done


def _reauthentication(portal: Portal, client: FlaskClient, username: str, response: TestResponse) -> None:
    """The session ended, the user signs in afresh and comes back to the same request
    (without prompt=login or max_age), which now issues a code."""
    assert response.status_code == 302
    login_page = response.headers["Location"]
    assert login_page.startswith("/login?next=")
    target = parse_qs(urlsplit(login_page).query)["next"][0]
    assert target.startswith("/oauth/authorize?")
    back = parse_qs(urlsplit(target).query)
    assert "login" not in back.get("prompt", [""])[0].split() and "max_age" not in back
    assert back["state"] == ["state-1"] and back["redirect_uri"] == [REDIRECT]
    assert not is_signed_in(client)  # the old session is gone
    done = _sign_in_again(portal, client, username, login_page)
    assert done.headers["Location"] == target
    assert code_of(client.get(target))


def test_prompt_login_forces_a_new_sign_in(portal: Portal, client_id: str) -> None:
    client, username = two_factor_client(portal)
    assert is_signed_in(client)
    _reauthentication(portal, client, username, authorize(client, client_id, prompt="login"))


def test_max_age_exceeded_forces_a_new_sign_in(portal: Portal, client_id: str) -> None:
    client, username = two_factor_client(portal)
    assert code_of(authorize(client, client_id, max_age="300"))  # fresh enough
    with client.session_transaction() as session:
        session["auth_time"] = int(session["auth_time"]) - 600
    _reauthentication(portal, client, username, authorize(client, client_id, max_age="300"))


def test_prompt_none_for_an_account_still_setting_up_is_interaction_required(portal: Portal, client_id: str) -> None:
    username, password = new_account(portal)
    client = portal.app.test_client()
    assert sign_in(client, username, password).headers["Location"] == "/password"
    assert error_of(authorize(client, client_id, prompt="none"))["error"] == ["interaction_required"]
