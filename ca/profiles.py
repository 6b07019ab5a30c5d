"""Certificate profiles: versioned configuration, validated at start-up."""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from govpki.errors import ConfigError, NotFoundError

KeyType = Literal["rsa", "ec-p256", "ec-p384"]
KeyUsageName = Literal[
    "digital_signature",
    "non_repudiation",
    "key_encipherment",
    "key_agreement",
    "key_encipherment_or_agreement",
    "data_encipherment",
    "key_cert_sign",
    "crl_sign",
]
EkuName = Literal["server_auth", "client_auth", "email_protection", "code_signing", "ocsp_signing", "time_stamping"]
SubjectField = Literal["C", "ST", "L", "O", "OU", "CN"]
SanType = Literal["dns", "ip", "email", "uri"]

EKU_OIDS: Mapping[str, x509.ObjectIdentifier] = {
    "server_auth": ExtendedKeyUsageOID.SERVER_AUTH,
    "client_auth": ExtendedKeyUsageOID.CLIENT_AUTH,
    "email_protection": ExtendedKeyUsageOID.EMAIL_PROTECTION,
    "code_signing": ExtendedKeyUsageOID.CODE_SIGNING,
    "ocsp_signing": ExtendedKeyUsageOID.OCSP_SIGNING,
    "time_stamping": ExtendedKeyUsageOID.TIME_STAMPING,
}


class Profile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = ""
    version: int = Field(ge=1)
    description: str
    key_types: tuple[KeyType, ...] = Field(min_length=1)
    rsa_min_bits: int = Field(default=2048, ge=2048, le=8192)
    validity_days: int = Field(ge=1, le=30 * 366)
    key_usage: tuple[KeyUsageName, ...] = Field(min_length=1)
    extended_key_usage: tuple[EkuName, ...] = ()
    policy_oid: str
    subject_from_identity: tuple[SubjectField, ...] = ("C", "ST", "O")
    subject_from_request: tuple[SubjectField, ...] = ("CN",)
    subject_required: tuple[SubjectField, ...] = ("CN",)
    san_types: tuple[SanType, ...] = ()
    san_required: bool = False
    ocsp_no_check: bool = False
    ca: bool = False
    path_length: int | None = Field(default=None, ge=0)
    issuer: Literal["issuing", "root"] = "issuing"

    @field_validator("policy_oid")
    @classmethod
    def _oid(cls, value: str) -> str:
        try:
            x509.ObjectIdentifier(value)
        except ValueError:
            raise ValueError(f"{value!r} is not a dotted OID") from None
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Profile:
        overlap = set(self.subject_from_identity) & set(self.subject_from_request)
        if overlap:
            raise ValueError(f"subject fields {sorted(overlap)} cannot come from both the identity and the request")
        missing = set(self.subject_required) - set(self.subject_from_request) - set(self.subject_from_identity)
        if missing:
            raise ValueError(f"required subject fields {sorted(missing)} have no source")
        if self.san_required and not self.san_types:
            raise ValueError("san_required is true but san_types is empty")
        if self.ca and not {"key_cert_sign", "crl_sign"} <= set(self.key_usage):
            raise ValueError("a CA profile needs key_cert_sign and crl_sign")
        if not self.ca and ({"key_cert_sign", "crl_sign"} & set(self.key_usage)):
            raise ValueError("key_cert_sign/crl_sign are only for CA profiles")
        if self.path_length is not None and not self.ca:
            raise ValueError("path_length is only for CA profiles")
        if self.ocsp_no_check and "ocsp_signing" not in self.extended_key_usage:
            raise ValueError("ocsp_no_check needs the ocsp_signing extended key usage")
        return self

    @property
    def policy(self) -> x509.ObjectIdentifier:
        return x509.ObjectIdentifier(self.policy_oid)


class ProfileSet(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal[1]
    policy_arc: str
    profiles: dict[str, Profile] = Field(min_length=1)

    def get(self, name: str, *, field: str = "profile") -> Profile:
        try:
            return self.profiles[name]
        except KeyError:
            known = ", ".join(sorted(self.profiles))
            raise NotFoundError(f"unknown profile {name!r}; known profiles: {known}", field=field) from None


def load_profiles(path: Path) -> ProfileSet:
    """Load and validate the profile file; any problem is a ConfigError naming the key."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"profiles file {path}: cannot read: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"profiles file {path}: not valid TOML: {exc}") from exc
    try:
        profiles = ProfileSet.model_validate(raw)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"])
            lines.append(f"  {where}: {err['msg']}")
        raise ConfigError(f"profiles file {path} is not valid:\n" + "\n".join(lines)) from None
    named = {name: p.model_copy(update={"name": name}) for name, p in profiles.profiles.items()}
    return profiles.model_copy(update={"profiles": named})
