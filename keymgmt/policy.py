"""Key policy: per purpose of key, the allowed algorithms, the lifetime (days of use)
and the rotation overlap. Versioned configuration (``keymgmt/data/key_policy.toml``,
or ``GOVPKI_KEY_POLICY_FILE``), validated at start-up like the certificate profiles."""

from __future__ import annotations

import datetime as _dt
import enum
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from govpki.config import PACKAGE_ROOT
from govpki.errors import ConfigError, InvalidError

DEFAULT_POLICY_FILE = PACKAGE_ROOT / "keymgmt" / "data" / "key_policy.toml"

# What a key record's algorithm may be: the key stores' asymmetric algorithms, and
# AES-256 for a symmetric storage key (the KMC's, where the store makes one).
PolicyAlgorithm = Literal["ec-p256", "ec-p384", "rsa-2048", "rsa-3072", "rsa-4096", "aes-256"]


class KeyPurpose(enum.StrEnum):
    ROOT = "root"
    ISSUING_CA = "issuing_ca"
    OCSP_SIGNING = "ocsp_signing"
    AUDIT_SIGNING = "audit_signing"
    TLOG_SIGNING = "tlog_signing"
    TOKEN_SIGNING = "token_signing"
    KMC_STORAGE = "kmc_storage"
    ESCROWED_ENCRYPTION = "escrowed_encryption"
    SUBSCRIBER_DATA = "subscriber_data"  # the RA's AES-256 key for officials' ID numbers
    TOTP_SEALING = "totp_sealing"  # the AES-256 key staff TOTP secrets are sealed under


# Keys replaced on schedule with an overlap window (the others are replaced by a
# ceremony or a rollover, or never).
ROTATING = (KeyPurpose.OCSP_SIGNING, KeyPurpose.AUDIT_SIGNING, KeyPurpose.TLOG_SIGNING, KeyPurpose.TOKEN_SIGNING)


def purpose_of(value: str, field: str = "purpose") -> KeyPurpose:
    try:
        return KeyPurpose(value)
    except ValueError:
        raise InvalidError(
            f"unknown key purpose {value!r}; one of {', '.join(p.value for p in KeyPurpose)}", field=field
        ) from None


class PurposePolicy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    algorithms: tuple[PolicyAlgorithm, ...] = Field(min_length=1)
    lifetime_days: int = Field(ge=1, le=30 * 366)
    overlap_days: int = Field(ge=0)

    @model_validator(mode="after")
    def _overlap_within_lifetime(self) -> PurposePolicy:
        if self.overlap_days >= self.lifetime_days:
            raise ValueError("overlap_days must be less than lifetime_days")
        if len(set(self.algorithms)) != len(self.algorithms):
            raise ValueError("algorithms lists an algorithm twice")
        return self

    @property
    def default_algorithm(self) -> str:
        return self.algorithms[0]

    @property
    def lifetime(self) -> _dt.timedelta:
        return _dt.timedelta(days=self.lifetime_days)

    @property
    def overlap(self) -> _dt.timedelta:
        return _dt.timedelta(days=self.overlap_days)


# Purposes added after policy files were written (GOVPKI_KEY_POLICY_FILE): a file without
# them still loads, and these (the built-in file's) apply.
_LATER_PURPOSES: dict[KeyPurpose, dict[str, Any]] = {
    KeyPurpose.SUBSCRIBER_DATA: {"algorithms": ["aes-256"], "lifetime_days": 3650, "overlap_days": 0},
    KeyPurpose.TOTP_SEALING: {"algorithms": ["aes-256"], "lifetime_days": 3650, "overlap_days": 0},
}


class KeyPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: int = Field(ge=1)
    purposes: dict[KeyPurpose, PurposePolicy]

    @model_validator(mode="before")
    @classmethod
    def _later_purposes(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("purposes"), dict):
            purposes = dict(data["purposes"])
            for purpose, default in _LATER_PURPOSES.items():
                purposes.setdefault(purpose.value, default)
            data = {**data, "purposes": purposes}
        return data

    @model_validator(mode="after")
    def _every_purpose(self) -> KeyPolicy:
        missing = [p.value for p in KeyPurpose if p not in self.purposes]
        if missing:
            raise ValueError(f"no policy for purpose(s) {', '.join(missing)}")
        return self

    def get(self, purpose: KeyPurpose | str) -> PurposePolicy:
        return self.purposes[purpose_of(purpose) if isinstance(purpose, str) else purpose]

    def check_algorithm(self, purpose: KeyPurpose | str, algorithm: str, field: str = "algorithm") -> None:
        """Raise InvalidError (``keymgmt.algorithm_not_allowed``) unless the policy allows
        ``algorithm`` for keys of ``purpose``."""
        policy = self.get(purpose)
        if algorithm not in policy.algorithms:
            raise InvalidError(
                f"the key policy does not allow {algorithm!r} for {KeyPurpose(purpose).value} keys; "
                f"allowed: {', '.join(policy.algorithms)}",
                field=field,
                code="keymgmt.algorithm_not_allowed",
            )


def load_key_policy(path: Path | None = None) -> KeyPolicy:
    """Load and validate the policy file; any problem is a ConfigError naming the key."""
    path = path or DEFAULT_POLICY_FILE
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"key policy file {path}: cannot read: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"key policy file {path}: not valid TOML: {exc}") from exc
    try:
        return KeyPolicy.model_validate(raw)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "(file)"
            lines.append(f"  {where}: {err['msg']}")
        raise ConfigError(f"key policy file {path} is not valid:\n" + "\n".join(lines)) from None
