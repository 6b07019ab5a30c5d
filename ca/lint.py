"""Lint with pkilint before signing. Findings are data with stable dotted codes."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from pkilint import loader
from pkilint.pkix import certificate, extension, name
from pkilint.validation import ValidationFindingSeverity

from govpki.errors import FieldProblem, InvalidError

REFUSING = frozenset({ValidationFindingSeverity.ERROR, ValidationFindingSeverity.FATAL})


@dataclass(frozen=True)
class Finding:
    code: str
    severity: str
    path: str
    message: str | None

    @property
    def refuses(self) -> bool:
        return self.severity in {s.name for s in REFUSING}


class LintRefusedError(InvalidError):
    code = "ca.lint_refused"

    def __init__(self, findings: list[Finding]) -> None:
        refusing = [f for f in findings if f.refuses]
        super().__init__(
            "the certificate this request would produce fails the lint: "
            + "; ".join(f"{f.code} at {f.path}" for f in refusing),
            field="csr",
            problems=[FieldProblem("csr", f"{f.severity} {f.code}: {f.message or f.path}") for f in refusing],
        )
        self.findings = findings


_local = threading.local()


def _validator() -> Any:
    # pkilint validators keep per-run state; one per thread is safe and cheap.
    v = getattr(_local, "validator", None)
    if v is None:
        v = certificate.create_pkix_certificate_validator_container(
            certificate.create_decoding_validators(name.ATTRIBUTE_TYPE_MAPPINGS, extension.EXTENSION_MAPPINGS),
            [
                certificate.create_issuer_validator_container([]),
                certificate.create_validity_validator_container(),
                certificate.create_subject_validator_container([]),
                certificate.create_extensions_validator_container([]),
                certificate.create_spki_validator_container([]),
            ],
        )
        _local.validator = v
    return v


_LOADER = loader.RFC5280CertificateDocumentLoader()


def lint_certificate(der: bytes) -> list[Finding]:
    """RFC 5280 lint of one DER certificate; every finding, any severity."""
    try:
        doc = _LOADER.load_der_document(der, "certificate")
    except Exception as exc:  # pkilint raises assorted decoding errors
        return [Finding("govpki.lint.decode_failed", "FATAL", "certificate", str(exc))]
    results = _validator().validate(doc.root)
    found: list[Finding] = []
    for result in results:
        for desc in result.finding_descriptions:
            found.append(
                Finding(
                    code=str(desc.finding.code),
                    severity=desc.finding.severity.name,
                    path=str(result.node.path),
                    message=desc.message,
                )
            )
    return found


def check(der: bytes) -> list[Finding]:
    """Lint and raise LintRefusedError on any ERROR or FATAL finding."""
    findings = lint_certificate(der)
    if any(f.refuses for f in findings):
        raise LintRefusedError(findings)
    return findings
