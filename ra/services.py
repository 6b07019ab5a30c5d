"""Seed and read prefectures and their RAs from the region data file."""

from __future__ import annotations

import json
import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from sqlalchemy import select
from sqlalchemy.orm import Session

from govpki import audit
from govpki.clock import Clock
from govpki.errors import ConfigError, ForbiddenError
from govpki.principal import Principal, PrincipalKind, Role
from ra.models import Prefecture, RegistrationAuthority

DEFAULT_RA_PROFILES = ("official-signing", "official-encryption", "service-tls-server", "service-tls-client")


class PrefectureEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    code: str
    name: str = Field(min_length=1, max_length=64)
    name_en: str = Field(min_length=1, max_length=128)

    @field_validator("code")
    @classmethod
    def _code(cls, value: str) -> str:
        if not re.fullmatch(r"\d{6}", value):
            raise ValueError("must be a six-digit GB/T 2260 area code")
        return value


class RegionFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    format: int = Field(ge=1, le=1)
    region: str = Field(min_length=1)
    region_en: str = Field(min_length=1)
    prefectures: list[PrefectureEntry] = Field(min_length=1)


def load_region(path: Path) -> RegionFile:
    try:
        region = RegionFile.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except OSError as exc:
        raise ConfigError(f"region file {path}: cannot read: {exc.strerror}") from exc
    except json.JSONDecodeError as exc:
        raise ConfigError(f"region file {path}: not valid JSON: {exc}") from exc
    except ValidationError as exc:
        lines = [f"  {'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        raise ConfigError(f"region file {path} is not valid:\n" + "\n".join(lines)) from None
    codes = [p.code for p in region.prefectures]
    if len(set(codes)) != len(codes):
        raise ConfigError(f"region file {path}: prefecture codes repeat")
    return region


class RegionService:
    def __init__(self, clock: Clock) -> None:
        self._clock = clock

    def seed(self, session: Session, principal: Principal, region: RegionFile) -> int:
        """Create the prefectures and one RA each that do not exist yet. Returns how many were added."""
        if principal.kind is not PrincipalKind.SYSTEM and not principal.has(Role.SECURITY_ADMIN):
            raise ForbiddenError("only a security administrator may create RAs")
        existing = set(session.scalars(select(Prefecture.code)))
        added = 0
        for entry in region.prefectures:
            if entry.code in existing:
                continue
            session.add(Prefecture(code=entry.code, name=entry.name, name_en=entry.name_en, region=region.region))
            session.add(
                RegistrationAuthority(
                    prefecture_code=entry.code,
                    name=f"{entry.name}注册审核中心",
                    allowed_profiles=" ".join(DEFAULT_RA_PROFILES),
                    active=True,
                    created_at=self._clock.now(),
                )
            )
            session.flush()
            audit.record(
                session,
                principal,
                "ra:authority:create",
                object_type="ra",
                object_id=entry.code,
                details={"prefecture": entry.name, "profiles": list(DEFAULT_RA_PROFILES)},
                clock=self._clock,
            )
            added += 1
        return added

    def list(self, session: Session) -> list[RegistrationAuthority]:
        return list(session.scalars(select(RegistrationAuthority).order_by(RegistrationAuthority.prefecture_code)))
