"""Property: any subject text or DNS name either yields a lint-clean certificate or a
clear InvalidError naming a csr.* field — never another exception."""

from __future__ import annotations

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from govpki.errors import InvalidError
from govpki.principal import SYSTEM
from tests.helpers import assert_lints_clean, csr_pem
from web.container import Services

KEY = ec.generate_private_key(ec.SECP256R1())
FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _try(services: Services, profile: str, csr: bytes) -> None:
    with services.sessions() as session:
        try:
            der = services.ca.issue(session, SYSTEM, profile=profile, csr=csr).cert_der
        except InvalidError as exc:
            assert exc.field is not None and exc.field.startswith("csr"), exc.field
            assert exc.reason
            return
    assert der is not None
    assert_lints_clean(der)


@pytest.mark.filterwarnings("ignore:Attribute's length must be:UserWarning")
@FUZZ
@given(cn=st.text(min_size=1, max_size=80), ou=st.none() | st.text(min_size=1, max_size=70))
def test_any_subject_text(services: Services, cn: str, ou: str | None):
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn, _validate=False)]
    if ou is not None:
        attrs.insert(0, x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ou, _validate=False))
    try:
        csr = csr_pem(KEY, cn=None, names=[], attrs=attrs)
    except ValueError:
        return  # cryptography itself cannot encode it (e.g. lone surrogates)
    _try(services, "official-signing", csr)


@FUZZ
@given(name=st.from_regex(r"[a-zA-Z0-9._*-]{1,70}", fullmatch=True))
def test_any_dns_name(services: Services, name: str):
    try:
        csr = csr_pem(KEY, cn="svc.example.gov.cn", names=[x509.DNSName(name)])
    except ValueError:
        return
    _try(services, "service-tls-server", csr)
