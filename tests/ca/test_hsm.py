"""The CA hierarchy with both key stores on a PKCS#11 HSM (SoftHSM2, for real)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from cryptography import x509
from sqlalchemy import select

from ca.models import CaKind, CertificateAuthority
from govpki.principal import SYSTEM
from keymgmt import KeyExportRefusedError, Pkcs11KeyStore
from tests.helpers import assert_lints_clean, csr_pem, make_config, openssl_verify
from tests.softhsm import softhsm_settings
from web.bootstrap import initialize
from web.container import build_services


@pytest.mark.parametrize("algorithm", ["ec-p384", "rsa-3072"])
def test_ca_on_hsm_issues_and_keys_do_not_leave(tmp_path: Path, database_url: str, algorithm: str):
    config = make_config(
        tmp_path / "instance",
        database_url,
        GOVPKI_ROOT_KEY_ALGORITHM=algorithm,
        GOVPKI_ISSUING_KEY_ALGORITHM=algorithm,
    )
    config = dataclasses.replace(
        config,
        root_keystore=softhsm_settings(tmp_path, "govpki-root"),
        online_keystore=softhsm_settings(tmp_path, "govpki-online"),
    )
    services = build_services(config)
    try:
        report = initialize(services, SYSTEM)
        assert report.root is not None and report.root.key_handle.startswith("pkcs11:")
        with services.sessions() as session:
            record = services.ca.issue(
                session, SYSTEM, profile="service-tls-server", csr=csr_pem(cn="hsm.example.gov.cn")
            )
            session.commit()
            root = services.ca.active_ca(session, CaKind.ROOT)
            issuing = services.ca.active_ca(session, CaKind.ISSUING)
            assert record.cert_der is not None
            assert_lints_clean(record.cert_der)
            result = openssl_verify(tmp_path, root.cert_der, issuing.cert_der, record.cert_der)
            assert result.returncode == 0, result.stderr
            key = x509.load_der_x509_certificate(root.cert_der).public_key()
            assert services.keystores["root"].public_key(root.key_handle).public_numbers() == key.public_numbers()
            for ca in session.scalars(select(CertificateAuthority)):
                store = services.keystores[ca.key_store]
                assert isinstance(store, Pkcs11KeyStore)
                protection = store.protection(ca.key_handle)
                assert protection.sensitive and not protection.extractable
                with pytest.raises(KeyExportRefusedError):
                    store.export_private_key(ca.key_handle)
                with pytest.raises(KeyExportRefusedError):
                    store.signer(ca.key_handle).private_bytes(None, None, None)  # type: ignore[arg-type]
    finally:
        services.dispose()
