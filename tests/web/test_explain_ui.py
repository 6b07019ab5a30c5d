"""The "explain a decision" page: security administrators only (auditors read the audit
only); the form shows the decision, the reason and every candidate with its checks in the
reader's language; bad input is shown next to its field, worded here, never pydantic's."""

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


PYDANTIC = ("should", "String", "Input", "pattern", "dictionary", "未通过校验", "Not accepted")


def test_explain_shows_the_decision_and_the_checks(portal: Portal) -> None:
    client = signed_in(portal)
    assert client.get("/authz/explain").status_code == 200
    page = html.unescape(text(client.get(f"/authz/explain?{ASK}&attributes=" + '{"prefecture":"6502"}')))
    assert 'class="decision-deny"' in page and "拒绝" in page
    assert "e-docs/reader/read-own-prefecture" in page and "same_prefecture_as_resource" in page
    assert "与资源的地州/市" in page and "“6501”" in page and "“6502”" in page
    assert "不成立" in page and "the subject's" not in page and "holds:" not in page
    page = html.unescape(text(client.get(f"/authz/explain?{ASK}&attributes=" + '{"prefecture":"6501"}')))
    assert 'class="decision-permit"' in page and "允许" in page
    assert "依据规则 read-own-prefecture" in page and "无范围限制" in page
    assert "grants" not in page and "is the resource's" not in page


def test_explain_in_english(portal: Portal) -> None:
    client = signed_in(portal)
    client.get("/lang/en")
    page = html.unescape(text(client.get(f"/authz/explain?{ASK}&attributes=" + '{"prefecture":"6502"}')))
    assert "Rules grant read on document, but none of them holds" in page
    assert "Same prefecture as the resource" in page and "— fails: " in page
    assert "The subject's prefecture '6501' is not the resource's '6502'." in page
    page = html.unescape(text(client.get(f"/authz/explain?{ASK}&attributes=" + '{"prefecture":"6501"}')))
    assert "Role reader (assignment #" in page and "by rule read-own-prefecture." in page
    page = html.unescape(text(client.get("/authz/explain?subject=nobody&application=e-docs&action=read&type=document")))
    assert "Subject nobody is not known to the policy." in page and 'class="decision-deny"' in page


BAD = [
    (
        "subject=zhang.san&application=E%20DOCS&action=read&type=document",
        "application",
        "应用系统名称应为 3–48 位小写字母、数字或连字符，以字母开头。",
        "Application name: use 3 to 48 lower-case letters, digits or hyphens, starting with a letter.",
    ),
    (
        "subject=zhang.san&application=e-docs&action=Read!&type=document",
        "action",
        "操作应为 1–64 位小写字母、数字或 _ . : -，以字母开头。",
        "Action: use 1 to 64 lower-case letters, digits, '_', '.', ':' or '-', starting with a letter.",
    ),
    (
        "subject=zhang.san&application=e-docs&action=read&type=",
        "type",
        "资源类型应为 1–64 位小写字母、数字或 _ . -，以字母开头。",
        "Resource type: use 1 to 64 lower-case letters, digits, '_', '.' or '-', starting with a letter.",
    ),
    (
        f"{ASK}&attributes=nope",
        "attributes",
        '资源属性不是有效的 JSON：请输入 JSON 对象，例如 {"prefecture": "6501"}。',
        'Resource attributes is not valid JSON: enter a JSON object, e.g. {"prefecture": "6501"}.',
    ),
    (  # nested far too deeply for the JSON parser
        f"{ASK}&attributes=" + "[" * 3000 + "]" * 3000,
        "attributes",
        '资源属性不是有效的 JSON：请输入 JSON 对象，例如 {"prefecture": "6501"}。',
        'Resource attributes is not valid JSON: enter a JSON object, e.g. {"prefecture": "6501"}.',
    ),
    (
        f"{ASK}&attributes=[1]",
        "attributes",
        '资源属性应为JSON 对象，例如 {"prefecture": "6501"}。',
        'Resource attributes must be a JSON object, e.g. {"prefecture": "6501"}.',
    ),
    (
        f"{ASK}&attributes=" + '{"Bad":1}',
        "attributes",
        "资源属性：名称 “Bad” 不允许；请使用 1–64 位小写字母、数字或 _，以字母开头。",
        "Resource attributes: the name \"Bad\" is not allowed; use 1 to 64 lower-case letters, digits or '_', "
        "starting with a letter.",
    ),
    (
        f"{ASK}&attributes=" + '{"level":[1]}',
        "attributes",
        "资源属性：“level” 的值应为至多 256 个字符的文本、整数或 true/false。",
        'Resource attributes: the value of "level" must be text of at most 256 characters, a whole number, '
        "or true or false.",
    ),
]


@pytest.mark.parametrize(("query", "field", "zh", "en"), BAD)
def test_bad_input_is_shown_next_to_its_field(portal: Portal, query: str, field: str, zh: str, en: str) -> None:
    client = signed_in(portal)
    page = text(client.get(f"/authz/explain?{query}"))
    assert [html.unescape(e) for e in field_errors(page, field)] == [zh] and "decision-" not in page
    assert not any(word in page for word in PYDANTIC), page
    client.get("/lang/en")
    page = text(client.get(f"/authz/explain?{query}"))
    assert [html.unescape(e) for e in field_errors(page, field)] == [en]
    assert not any(word in page for word in PYDANTIC)


def test_the_api_keeps_its_english_reason(portal: Portal) -> None:
    """The codes behind the translated messages do not change what the API answers."""
    from authz.policy_schema import DecisionRequest, parse
    from govpki.errors import InvalidError

    with pytest.raises(InvalidError) as err:
        parse(
            DecisionRequest,
            {"subject": "a", "application": "E", "action": "read", "resource": {"type": "d", "id": "1"}},
        )
    problem = err.value.problems[0]
    assert problem.field == "application" and problem.reason.startswith("has characters or a form that is not allowed")
    assert problem.code == "authz.field.pattern" and problem.params == {"format": "application"}


def test_auditors_may_not_explain(portal: Portal) -> None:
    client = signed_in(portal, Role.SECURITY_AUDITOR)
    refused = client.get(f"/authz/explain?{ASK}")
    assert refused.status_code == 403
    assert "只有安全管理员可以解释访问决定" in text(refused) and "Explain a decision" not in text(refused)
    assert 'href="/authz/explain"' not in text(client.get("/dashboard"))
    client.get("/lang/en")
    page = text(client.get("/authz/explain"))
    assert "Only security administrators may explain access decisions" in html.unescape(page)
    admin = signed_in(portal)
    assert 'href="/authz/explain"' in text(admin.get("/dashboard"))


@pytest.mark.parametrize("role", [Role.SYSTEM_ADMIN, Role.CA_OPERATOR])
def test_other_roles_get_403(portal: Portal, role: Role) -> None:
    client = signed_in(portal, role)
    assert client.get(f"/authz/explain?{ASK}").status_code == 403


def test_signed_out_is_sent_to_sign_in(portal: Portal) -> None:
    response = portal.app.test_client().get("/authz/explain")
    assert response.status_code == 302 and response.headers["Location"].startswith("/login")
