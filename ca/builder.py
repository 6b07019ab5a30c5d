"""Turn a profile, a subject and a public key into an (immutable) certificate builder."""

from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import AuthorityInformationAccessOID, CertificatePoliciesOID

from ca.csr import FIELD_OIDS, SUBJECT_ORDER
from ca.profiles import EKU_OIDS, Profile, SubjectField
from keymgmt.interfaces import PublicKey


@dataclass(frozen=True)
class IssuerUrls:
    """Where relying parties find the issuer certificate, OCSP and the CRL."""

    ca_issuers: str
    ocsp: str
    crl: str


def build_name(fields: Sequence[tuple[SubjectField, str]]) -> x509.Name:
    order = {name: i for i, name in enumerate(SUBJECT_ORDER)}
    ordered = sorted(fields, key=lambda item: order[item[0]])
    return x509.Name([x509.RelativeDistinguishedName([x509.NameAttribute(FIELD_OIDS[n], v)]) for n, v in ordered])


def key_usage(profile: Profile, public_key: PublicKey) -> x509.KeyUsage:
    names = set(profile.key_usage)
    if "key_encipherment_or_agreement" in names:
        names.discard("key_encipherment_or_agreement")
        names.add("key_agreement" if isinstance(public_key, ec.EllipticCurvePublicKey) else "key_encipherment")
    return x509.KeyUsage(
        digital_signature="digital_signature" in names,
        content_commitment="non_repudiation" in names,
        key_encipherment="key_encipherment" in names,
        data_encipherment="data_encipherment" in names,
        key_agreement="key_agreement" in names,
        key_cert_sign="key_cert_sign" in names,
        crl_sign="crl_sign" in names,
        encipher_only=False,
        decipher_only=False,
    )


def validity(
    profile: Profile, now: _dt.datetime, issuer_not_after: _dt.datetime | None
) -> tuple[_dt.datetime, _dt.datetime]:
    not_before = now.replace(microsecond=0)
    not_after = not_before + _dt.timedelta(days=profile.validity_days)
    if issuer_not_after is not None and not_after > issuer_not_after:
        not_after = issuer_not_after
    return not_before, not_after


def certificate_builder(
    *,
    profile: Profile,
    subject: x509.Name,
    public_key: PublicKey,
    serial: int,
    not_before: _dt.datetime,
    not_after: _dt.datetime,
    issuer: x509.Certificate | None,
    urls: IssuerUrls | None,
    sans: Sequence[x509.GeneralName] = (),
) -> x509.CertificateBuilder:
    """Build the certificate a profile describes. ``issuer=None`` means self-signed (a root)."""
    issuer_name = subject if issuer is None else issuer.subject
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(public_key)
        .serial_number(serial)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(
            x509.BasicConstraints(ca=profile.ca, path_length=profile.path_length if profile.ca else None), critical=True
        )
        .add_extension(key_usage(profile, public_key), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )
    if issuer is None:
        builder = builder.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public_key), critical=False)
    else:
        ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
    if profile.extended_key_usage:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([EKU_OIDS[e] for e in profile.extended_key_usage]), critical=False
        )
    policies = [x509.PolicyInformation(profile.policy, None)]
    if profile.ca:
        policies.append(x509.PolicyInformation(CertificatePoliciesOID.ANY_POLICY, None))
    if issuer is not None or not profile.ca:
        builder = builder.add_extension(x509.CertificatePolicies(policies), critical=False)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    if urls is not None:
        access = [
            x509.AccessDescription(
                AuthorityInformationAccessOID.CA_ISSUERS, x509.UniformResourceIdentifier(urls.ca_issuers)
            )
        ]
        if not profile.ca:
            access.insert(
                0, x509.AccessDescription(AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(urls.ocsp))
            )
        builder = builder.add_extension(x509.AuthorityInformationAccess(access), critical=False)
        builder = builder.add_extension(
            x509.CRLDistributionPoints(
                [x509.DistributionPoint([x509.UniformResourceIdentifier(urls.crl)], None, None, None)]
            ),
            critical=False,
        )
    if profile.ocsp_no_check:
        builder = builder.add_extension(x509.OCSPNoCheck(), critical=False)
    return builder
