"""Wires configuration to services once per process. ``web`` is the only layer
that knows every domain; it builds them here and hands them to views and CLI."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

import authz.models  # noqa: F401  (register tables on the shared metadata)
import ca.models  # noqa: F401
import ra.models  # noqa: F401
from authz.services import AccountService, TokenService
from ca.ledger import IssuanceLedger
from ca.profiles import ProfileSet, load_profiles
from ca.services import CaIdentity, CaService, CaSettings
from govpki import audit  # noqa: F401
from govpki.clock import Clock, SystemClock
from govpki.config import Config, KeyStoreSettings
from govpki.db import WriteGate, make_engine, make_sessionmaker, migrate
from keymgmt import KeyStore, ensure_passphrase_file, open_keystore
from ra.services import RegionFile, RegionService, load_region


@dataclass
class Services:
    config: Config
    clock: Clock
    engine: Engine
    sessions: sessionmaker[Session]
    profiles: ProfileSet
    region: RegionFile
    keystores: dict[str, KeyStore]
    ca: CaService
    accounts: AccountService
    tokens: TokenService
    regions: RegionService

    def dispose(self) -> None:
        self.engine.dispose()


def _inside(path: Path | None, folder: Path) -> bool:
    return path is not None and folder in path.resolve().parents


def prepare_instance(config: Config) -> None:
    """Create the instance folder and the demo secrets that live in it (0600).
    Secrets configured elsewhere are never invented: they must exist."""
    config.instance_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    if _inside(config.secret_key_file, config.instance_dir) and not config.secret_key_file.exists():
        fd = config.secret_key_file.open("x", encoding="ascii")
        config.secret_key_file.chmod(0o600)
        with fd:
            fd.write(secrets.token_urlsafe(48))
    for store in (config.root_keystore, config.online_keystore):
        if store.kind == "file" and _inside(store.passphrase_file, config.instance_dir):
            assert store.passphrase_file is not None
            ensure_passphrase_file(store.passphrase_file)


def _open_stores(config: Config) -> dict[str, KeyStore]:
    stores: dict[str, KeyStore] = {}
    for name, settings in (("root", config.root_keystore), ("online", config.online_keystore)):
        stores[name] = open_keystore(settings)
    return stores


def ca_settings(config: Config) -> CaSettings:
    return CaSettings(
        identity=CaIdentity(country="CN", province=config.province, organization=config.organization),
        base_url=config.base_url,
        root_name=config.root_ca_name,
        issuing_name=config.issuing_ca_name,
        root_key_algorithm=config.root_key_algorithm,
        issuing_key_algorithm=config.issuing_key_algorithm,
        root_validity_days=config.root_validity_days,
        issuing_validity_days=config.issuing_validity_days,
    )


def build_services(config: Config, *, clock: Clock | None = None, run_migrations: bool = True) -> Services:
    """Validate configuration (profiles, region file, key stores), migrate, wire services.
    Raises ConfigError with a clear message when anything is wrong."""
    clock = clock or SystemClock()
    profiles = load_profiles(config.profiles_file)
    region = load_region(config.region_file)
    prepare_instance(config)
    engine = make_engine(config.database_url)
    if run_migrations:
        migrate(engine)
    sessions = make_sessionmaker(engine)
    keystores = _open_stores(config)
    ca = CaService(
        settings=ca_settings(config),
        profiles=profiles,
        keystores=keystores,
        ledger=IssuanceLedger(engine, clock, WriteGate(config.database_url)),
        clock=clock,
    )
    return Services(
        config=config,
        clock=clock,
        engine=engine,
        sessions=sessions,
        profiles=profiles,
        region=region,
        keystores=keystores,
        ca=ca,
        accounts=AccountService(clock),
        tokens=TokenService(clock),
        regions=RegionService(clock),
    )


def keystore_summary(settings: KeyStoreSettings) -> str:
    if settings.kind == "file":
        return f"encrypted files in {settings.path}"
    return f"PKCS#11 token {settings.pkcs11_token_label!r} ({settings.pkcs11_module})"
