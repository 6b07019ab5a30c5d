"""The x509-limbo conformance suite (C2SP/x509-limbo, ~9,800 cases) through the
validation core, :func:`ca.validation.validate` — not the HTTP layer.

Each case's trusted certificates are the anchors, its untrusted intermediates the
intermediates; its validation time, peer name (DNS or IP), kind (server → purpose
``tls_server``, client → ``tls_client``) and max chain depth are passed on; its
CRLs, when it has any, are fed to the revocation lookup (:class:`GivenCrls`).
The intermediate-count input limit of the API is lifted here: the suite has
path-building cases with up to 100 candidates, and the limit is an input policy,
tested on its own in tests/ca/test_validation.py.

Skipped, and counted: the ids pyca/cryptography's own harness lists as
unsupported (``cryptography-upstream-skips.txt``) and cases we cannot express
or that use features cryptography declares unsupported (see ``_unexpressible``).
Everything else must agree with the expected result, except the justified list
KNOWN_DIFFERENCES (four reasons).
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
import os
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from ca.revocation_status import GivenCrls
from ca.validation import NoRevocationCheck, Purpose, StatusLookup, validate
from govpki.errors import InvalidError

LIMBO = Path(
    os.environ.get("GOVPKI_LIMBO_DIR") or Path(__file__).resolve().parents[3] / "shared" / "testdata" / "x509-limbo"
)

# Features pyca/cryptography's own limbo harness declares unsupported (its
# LIMBO_UNSUPPORTED_FEATURES, minus has-crl: we feed the CRLs). Pedantic CABF/RFC
# readings most validators ignore, policy constraints, directory-name constraints.
UNSUPPORTED_FEATURES = {
    "pedantic-public-suffix-wildcard",
    "name-constraint-dn",
    "pedantic-webpki-eku",
    "pedantic-webpki-subscriber-key",
    "pedantic-rfc5280",
    "rfc5280-incompatible-with-webpki",
    "has-policy-constraints",
}

_SOFT_FAIL = (
    "soft-fail revocation (by design, ca/revocation_status.py): a CRL that is present but unusable gives "
    "status 'unknown', reported in the answer; it does not by itself make the path invalid"
)
_CN = (
    "CABF BR 7.1.4.3 (a CN must repeat a SAN entry) is a rule for issuing CAs; cryptography, like most "
    "validators, matches names against the SAN only and ignores the CN"
)
_ROOT_AKI = (
    "cryptography does not check the AKI fields of a trust anchor; the suite (importance 'undetermined') "
    "wants roots with authorityCertIssuer/SerialNumber refused"
)
KNOWN_DIFFERENCES: dict[str, str] = {
    "crl::crlnumber-missing": _SOFT_FAIL,
    "crl::crlnumber-critical": _SOFT_FAIL,
    "crl::issuer-missing-crlsign": _SOFT_FAIL,
    "crl::issuer-no-keyusage-extension": (
        "cryptography's CA policy requires keyUsage in every CA certificate, so the path fails before the CRL "
        "is looked at (upstream's harness skips every has-crl case)"
    ),
    "webpki::aki::root-with-aki-authoritycertissuer": _ROOT_AKI,
    "webpki::aki::root-with-aki-authoritycertserialnumber": _ROOT_AKI,
    "webpki::aki::root-with-aki-all-fields": _ROOT_AKI,
    **{
        f"webpki::cn::{name}": _CN
        for name in (
            "ipv4-hex-mismatch",
            "ipv4-leading-zeros-mismatch",
            "ipv6-uppercase-mismatch",
            "ipv6-uncompressed-mismatch",
            "ipv6-non-rfc5952-mismatch",
            "punycode-not-in-san",
            "utf8-vs-punycode-mismatch",
            "not-in-san",
            "case-mismatch",
        )
    },
}


class _FixedClock:
    def __init__(self, now: dt.datetime) -> None:
        self._now = now

    def now(self) -> dt.datetime:
        return self._now


def _skips() -> set[str]:
    lines = (LIMBO / "cryptography-upstream-skips.txt").read_text().splitlines()
    return {line.strip() for line in lines if line.strip() and not line.startswith("#")}


def _unexpressible(case: dict[str, Any]) -> str | None:
    if case["validation_kind"] == "SERVER" and case["expected_peer_name"] is None:
        return "server case without a peer name"
    if case["expected_peer_names"]:
        return "expected client peer names (we do not match client names)"
    if case["signature_algorithms"]:
        return "signature algorithm restrictions"
    unsupported = UNSUPPORTED_FEATURES.intersection(case["features"] or [])
    if unsupported:
        return f"feature cryptography does not support ({', '.join(sorted(unsupported))})"
    return None


def _run(case: dict[str, Any]) -> str:
    def pem(text: str) -> x509.Certificate:
        return x509.load_pem_x509_certificate(text.encode())

    at = dt.datetime.fromisoformat(case["validation_time"]) if case["validation_time"] else dt.datetime.now(dt.UTC)
    purpose = Purpose.TLS_SERVER if case["validation_kind"] == "SERVER" else Purpose.TLS_CLIENT
    revocation: StatusLookup = NoRevocationCheck()
    if case["crls"]:
        revocation = GivenCrls([x509.load_pem_x509_crl(c.encode()) for c in case["crls"]], _FixedClock(at))
    try:
        anchors = [pem(c) for c in case["trusted_certs"]]
        result = validate(
            case["peer_certificate"].encode(),
            [c.encode() for c in case["untrusted_intermediates"]],
            purpose=purpose,
            host=case["expected_peer_name"]["value"] if purpose is Purpose.TLS_SERVER else None,
            at=at,
            trust_anchors=anchors,
            revocation=revocation,
            max_chain_depth=8 if case["max_chain_depth"] is None else case["max_chain_depth"],
            max_intermediates=1000,
        )
    except InvalidError:  # input the API refuses (e.g. a host name that is no host name)
        return "FAILURE"
    except ValueError:  # a trusted certificate the loader refuses outright
        return "FAILURE"
    return "SUCCESS" if result.valid else "FAILURE"


@pytest.mark.skipif(not (LIMBO / "limbo.json.gz").exists(), reason="x509-limbo test data not present")
def test_x509_limbo():
    with gzip.open(LIMBO / "limbo.json.gz") as f:
        cases = json.load(f)["testcases"]
    skips = _skips()
    counts: Counter[str] = Counter()
    disagreements: list[str] = []
    known: list[str] = []
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # negative serials etc. are what the suite is about
        for case in cases:
            if case["id"] in skips:
                counts["skipped: cryptography upstream skip list"] += 1
                continue
            why = _unexpressible(case)
            if why:
                counts[f"skipped: {why}"] += 1
                continue
            actual = _run(case)
            expected = case["expected_result"]
            counts[f"ran, expected {expected}"] += 1
            if actual == expected:
                counts[f"agree, expected {expected}"] += 1
            elif case["id"] in KNOWN_DIFFERENCES:
                known.append(case["id"])
            else:
                disagreements.append(f"{case['id']}: expected {expected}, got {actual}")
    elapsed = time.perf_counter() - started
    ran = counts["ran, expected SUCCESS"] + counts["ran, expected FAILURE"]
    agreed = counts["agree, expected SUCCESS"] + counts["agree, expected FAILURE"]
    print(
        f"\nx509-limbo: {len(cases)} cases, {ran} run, {agreed} agree ({agreed / ran:.2%}), "
        f"{len(known)} known differences, {len(disagreements)} other disagreements, {elapsed:.1f} s"
    )
    print(
        f"  expected SUCCESS accepted: {counts['agree, expected SUCCESS']}/{counts['ran, expected SUCCESS']}; "
        f"expected FAILURE rejected: {counts['agree, expected FAILURE']}/{counts['ran, expected FAILURE']}"
    )
    for key, value in sorted(counts.items()):
        if key.startswith("skipped"):
            print(f"  {key}: {value}")
    assert not disagreements, "\n".join(disagreements)
    assert sorted(known) == sorted(KNOWN_DIFFERENCES), "a known difference is gone: update KNOWN_DIFFERENCES"
    assert elapsed < 60
