"""Wires configuration to services once per process. ``web`` is the only layer
that knows every domain; it builds them here and hands them to views and CLI."""

from __future__ import annotations

import os
import secrets
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

import authz.models  # noqa: F401  (register tables on the shared metadata)
import ca.models  # noqa: F401
import keymgmt.kmc_models
import keymgmt.models  # noqa: F401
import ra.models  # noqa: F401
from authz.applications import ApplicationService
from authz.archive import AuditArchiveService, RetentionSettings
from authz.auditing import AuditCheckpointService, AuditSettings
from authz.certlogin import OFFICIAL_SIGNING_PROFILE, CertificateLoginService, parse_trusted_proxies
from authz.console import AuditConsoleService
from authz.decisions import DecisionService
from authz.directory import RoleDirectory
from authz.evidence import EvidenceService
from authz.official_signin import OfficialSignInService
from authz.oidc import OidcProvider, OidcSettings
from authz.oidc_keys import TokenSigner
from authz.policy import PolicyService
from authz.services import AccountService, SignInSettings, TokenService
from authz.totp import TotpSealer
from ca.ceremony import CeremonyService
from ca.crl import CrlService, CrlSettings
from ca.evidence import CertificateStats, TlogEvidence
from ca.ledger import IssuanceLedger
from ca.ocsp import OcspService
from ca.profiles import ProfileSet, load_profiles
from ca.revocation import RevocationService
from ca.revocation_status import CrlStatus, DatabaseRecords
from ca.services import CaIdentity, CaService, CaSettings
from ca.transparency import TransparencyLog
from ca.validation_service import ValidationService, load_trust_anchors
from govpki import audit  # noqa: F401
from govpki.clock import Clock, SystemClock
from govpki.config import KEY_ALGORITHMS, Config, KeyAlgorithm, KeyStoreSettings
from govpki.db import WriteGate, make_engine, make_sessionmaker, migrate
from govpki.errors import ConfigError, InvalidError
from govpki.principal import Role
from keymgmt import KeyStore, ensure_passphrase_file, open_keystore
from keymgmt.backup import KeyBackupService
from keymgmt.kmc import KmcService, KmcSettings
from keymgmt.policy import KeyPolicy, KeyPurpose, load_key_policy
from keymgmt.services import KeyService
from ra.encryption import EncryptionCertificateService
from ra.expiry import ExpiryService, ExpirySettings
from ra.imports import ImportService
from ra.portal import RaPortalService
from ra.requests import RequestLedger, RequestService
from ra.services import RegionFile, RegionService, load_region
from ra.subscribers import SubscriberService


@dataclass
class Services:
    config: Config
    clock: Clock
    engine: Engine
    sessions: sessionmaker[Session]
    profiles: ProfileSet
    region: RegionFile
    keystores: KeyStores
    ca: CaService
    revocation: RevocationService
    crl: CrlService
    ocsp: OcspService
    accounts: AccountService
    tokens: TokenService
    regions: RegionService
    validation: ValidationService
    tlog: TransparencyLog
    auditing: AuditCheckpointService
    keys: KeyService
    archive: AuditArchiveService
    backup: KeyBackupService
    expiry: ExpiryService
    ceremonies: CeremonyService
    kmc: KmcService
    encryption: EncryptionCertificateService
    audit_console: AuditConsoleService
    evidence: EvidenceService
    certificate_stats: CertificateStats
    applications: ApplicationService
    policy: PolicyService  # the access policy (authz/policy.py) and its decisions (authz/decisions.py)
    decisions: DecisionService
    subscribers: SubscriberService
    requests: RequestService
    oidc: OidcProvider  # the OpenID Connect provider (authz/oidc.py, web/oidc.py)
    certlogin: CertificateLoginService  # certificate sign-in through the trusted TLS front; application mTLS
    ra_portal: RaPortalService  # the RA clerk portal: certificate pages, dashboard, key hand-over
    ra_imports: ImportService  # bulk enrollment of officials (CSV)
    official_signin: OfficialSignInService  # officials' second way in: password + TOTP (authz/official_signin.py)

    def dispose(self) -> None:
        self.ocsp.close()
        self.engine.dispose()


def _inside(path: Path | None, folder: Path) -> bool:
    return path is not None and folder in path.resolve().parents


def _is_new_demo_store(settings: KeyStoreSettings, instance_dir: Path) -> bool:
    """A file key store inside the instance folder that has never held a key: its
    passphrase may be made here. An existing store never gets a new passphrase, and
    secrets configured outside the instance are never invented."""
    return (
        settings.kind == "file"
        and _inside(settings.passphrase_file, instance_dir)
        and settings.passphrase_file is not None
        and not settings.passphrase_file.exists()
        and (settings.path is None or not settings.path.exists() or not any(settings.path.iterdir()))
    )


def prepare_instance(config: Config) -> None:
    """Create the instance folder and its session secret (0600)."""
    config.instance_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    if _inside(config.secret_key_file, config.instance_dir) and not config.secret_key_file.exists():
        fd = os.open(config.secret_key_file, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)  # 0600 from the first byte
        with os.fdopen(fd, "w", encoding="ascii") as out:
            out.write(secrets.token_urlsafe(48))


class KeyStores(Mapping[str, KeyStore]):
    """The key stores by name ("root", "online"), each opened on first use.

    The root store is needed only for ceremonies (and, later, the root's CRL): a
    running service must not need it, so the root key can be kept offline."""

    def __init__(self, settings: Mapping[str, KeyStoreSettings], instance_dir: Path) -> None:
        self._settings = dict(settings)
        self._instance_dir = instance_dir
        self._open: dict[str, KeyStore] = {}
        self._lock = threading.Lock()

    def __getitem__(self, name: str) -> KeyStore:
        with self._lock:
            store = self._open.get(name)
            if store is None:
                settings = self._settings[name]
                if _is_new_demo_store(settings, self._instance_dir):
                    assert settings.passphrase_file is not None
                    ensure_passphrase_file(settings.passphrase_file)
                store = open_keystore(settings)
                self._open[name] = store
            return store

    def __iter__(self) -> Iterator[str]:
        return iter(self._settings)

    def __len__(self) -> int:
        return len(self._settings)


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


def crl_settings(config: Config) -> CrlSettings:
    return CrlSettings(
        base_url=config.base_url,
        crl_validity=timedelta(hours=config.crl_validity_hours),
        crl_refresh=timedelta(hours=config.crl_refresh_hours),
        delta_validity=timedelta(minutes=config.delta_crl_validity_minutes),
        delta_refresh=timedelta(minutes=config.delta_crl_refresh_minutes),
        arl_validity=timedelta(days=config.arl_validity_days),
    )


def audit_settings(config: Config) -> AuditSettings:
    return AuditSettings(
        checkpoint_interval=timedelta(minutes=config.audit_checkpoint_minutes),
        checkpoint_file=config.checkpoint_file,
        syslog=config.audit_syslog,
    )


def expiry_settings(config: Config, profiles: ProfileSet) -> ExpirySettings:
    return ExpirySettings(
        thresholds=config.expiry_notice_days,
        ra_mailbox=config.expiry_notice_ra_mailbox,
        smtp=config.smtp,
        excluded_profiles=frozenset(p.name for p in profiles.profiles.values() if p.ca or p.ocsp_no_check),
    )


def build_services(config: Config, *, clock: Clock | None = None, run_migrations: bool = True) -> Services:
    """Validate configuration (profiles, region file, key stores), migrate, wire services.
    Raises ConfigError with a clear message when anything is wrong."""
    clock = clock or SystemClock()
    profiles = load_profiles(config.profiles_file)
    key_policy = load_key_policy(config.key_policy_file)
    check_key_policy(config, key_policy, profiles)
    region = load_region(config.region_file)
    extra_anchors = load_trust_anchors(config.extra_trust_anchors_file) if config.extra_trust_anchors_file else []
    prepare_instance(config)
    engine = make_engine(config.database_url)
    if run_migrations:
        migrate(engine)
    sessions = make_sessionmaker(engine)
    stores = {"root": config.root_keystore, "online": config.online_keystore}
    if config.kmc_keystore is not None:
        stores["kmc"] = config.kmc_keystore
    keystores = KeyStores(stores, config.instance_dir)
    keystores["online"]  # the online store must open now: a wrong PIN or passphrase stops start-up
    if "kmc" in stores:
        keystores["kmc"]  # so must a key store of the KMC's own
    gate = WriteGate(config.database_url)
    keys = KeyService(keystores, clock, key_policy)
    tlog = TransparencyLog(keystores, clock, timedelta(minutes=config.tlog_sth_minutes), keys)
    ca = CaService(
        settings=ca_settings(config),
        profiles=profiles,
        keystores=keystores,
        ledger=IssuanceLedger(engine, clock, gate, tlog, keys),
        clock=clock,
        keys=keys,
    )
    ocsp_policy = key_policy.get(KeyPurpose.OCSP_SIGNING)
    try:
        ocsp = OcspService(
            ca=ca,
            keystores=keystores,
            engine=engine,
            gate=gate,
            clock=clock,
            validity_hours=config.ocsp_validity_hours,
            refresh_hours=config.ocsp_refresh_hours,
            responder_days=ocsp_policy.lifetime_days,
            renew_days=ocsp_policy.overlap_days,
            key_algorithm=_key_algorithm(ocsp_policy.default_algorithm),
            keys=keys,
        )
    except InvalidError as exc:
        raise ConfigError(f"GOVPKI_{(exc.field or '').upper()}: {exc.reason}") from None
    revocation = RevocationService(clock, tlog)
    # a status change re-signs the certificate's OCSP responses in its own transaction
    revocation.on_change(ocsp.on_status_change)
    keys.set_rotator(KeyPurpose.OCSP_SIGNING, ocsp.rotate_all)
    auditing = AuditCheckpointService(keystores, clock, audit_settings(config), keys)
    kmc = KmcService(settings=kmc_settings(config), keystores=keystores, officers=officers(), clock=clock, keys=keys)
    encryption = EncryptionCertificateService(ca=ca, kmc=kmc)
    subscribers = SubscriberService(keystores, clock, keys=keys)
    validation = ValidationService(
        clock=clock, crl_status=CrlStatus(clock), extra_anchors=extra_anchors, records=DatabaseRecords(revocation)
    )
    requests = RequestService(
        subscribers=subscribers,
        ca=ca,
        revocation=revocation,
        encryption=encryption,
        ledger=RequestLedger(engine, clock, gate),
        clock=clock,
    )
    sealer = TotpSealer(keystores, keys=keys)
    accounts = AccountService(clock, signin_settings(config), sealer)
    certlogin = certificate_login(config, clock, validation, profiles)
    return Services(
        config=config,
        clock=clock,
        engine=engine,
        sessions=sessions,
        profiles=profiles,
        region=region,
        keystores=keystores,
        ca=ca,
        revocation=revocation,
        crl=CrlService(crl_settings(config), keystores, clock, keys),
        ocsp=ocsp,
        accounts=accounts,
        tokens=TokenService(clock),
        regions=RegionService(clock),
        validation=validation,
        tlog=tlog,
        auditing=auditing,
        keys=keys,
        archive=AuditArchiveService(
            keystores,
            clock,
            RetentionSettings(timedelta(days=config.audit_retention_days), config.archive_dir),
            auditing,
        ),
        backup=KeyBackupService(clock, keys=keys),
        expiry=ExpiryService(clock, expiry_settings(config, profiles)),
        ceremonies=CeremonyService(
            clock, {"root": keystore_summary(config.root_keystore), "online": keystore_summary(config.online_keystore)}
        ),
        kmc=kmc,
        encryption=encryption,
        audit_console=AuditConsoleService(clock, auditing),
        evidence=EvidenceService(keystores, clock, auditing, TlogEvidence()),
        certificate_stats=CertificateStats(clock),
        applications=ApplicationService(clock),
        policy=PolicyService(clock),
        decisions=DecisionService(clock, refresh=timedelta(milliseconds=config.authz_policy_refresh_ms)),
        subscribers=subscribers,
        requests=requests,
        ra_portal=RaPortalService(
            subscribers=subscribers, requests=requests, clock=clock, pickup_dir=config.instance_dir / "ra-pickup"
        ),
        oidc=OidcProvider(oidc_settings(config), TokenSigner(keystores, keys, clock), keys, clock),
        certlogin=certlogin,
        ra_imports=ImportService(subscribers, clock),
        official_signin=OfficialSignInService(clock, accounts, certlogin, sealer),
    )


def oidc_settings(config: Config) -> OidcSettings:
    return OidcSettings(
        issuer=config.base_url,
        code_lifetime=timedelta(seconds=config.oidc_code_seconds),
        access_token_lifetime=timedelta(minutes=config.oidc_access_token_minutes),
        id_token_lifetime=timedelta(minutes=config.oidc_id_token_minutes),
        refresh_token_lifetime=timedelta(hours=config.oidc_refresh_token_hours),
    )


def certificate_login(
    config: Config, clock: Clock, validation: ValidationService, profiles: ProfileSet
) -> CertificateLoginService:
    """Officials sign in with a certificate of the official-signing profile (its policy OID)."""
    try:
        proxies = parse_trusted_proxies(config.trusted_proxies)
    except InvalidError as exc:
        raise ConfigError(f"GOVPKI_TRUSTED_PROXIES: {exc.reason}") from None
    policy = profiles.get(OFFICIAL_SIGNING_PROFILE).policy_oid
    return CertificateLoginService(clock, validation, trusted_proxies=proxies, official_policy_oids=frozenset({policy}))


def signin_settings(config: Config) -> SignInSettings:
    return SignInSettings(
        max_failures=config.signin_max_failures,
        failure_window=timedelta(minutes=config.signin_failure_window_minutes),
        lockout=timedelta(minutes=config.signin_lockout_minutes),
        totp_issuer=config.organization,
    )


def kmc_settings(config: Config) -> KmcSettings:
    return KmcSettings(
        store_name="online" if config.kmc_keystore is None else "kmc",
        key_algorithm=config.kmc_key_algorithm,
        recovery_m=config.kmc_recovery_m,
        recovery_n=config.kmc_recovery_n,
    )


def officers() -> RoleDirectory:
    return RoleDirectory(Role.KEY_RECOVERY_OFFICER)


def check_key_policy(config: Config, policy: KeyPolicy, profiles: ProfileSet) -> None:
    """The configured CA key algorithms and the OCSP responder lifetime must fit the key policy."""
    where = config.key_policy_file or "the shipped key policy"
    for name, purpose, algorithm in (
        ("ROOT_KEY_ALGORITHM", KeyPurpose.ROOT, config.root_key_algorithm),
        ("ISSUING_KEY_ALGORITHM", KeyPurpose.ISSUING_CA, config.issuing_key_algorithm),
    ):
        allowed = policy.get(purpose).algorithms
        if algorithm not in allowed:
            raise ConfigError(
                f"GOVPKI_{name}: {algorithm!r} is not allowed for {purpose.value} keys by {where} "
                f"(allowed: {', '.join(allowed)})"
            )
    ocsp = policy.get(KeyPurpose.OCSP_SIGNING)
    if ocsp.default_algorithm not in KEY_ALGORITHMS:
        raise ConfigError(f"{where}: purposes.ocsp_signing.algorithms: the first must be a signing key algorithm")
    profile_days = profiles.get("ocsp-signing").validity_days
    if ocsp.lifetime_days > profile_days:
        raise ConfigError(
            f"{where}: purposes.ocsp_signing.lifetime_days ({ocsp.lifetime_days}) is the OCSP responder "
            f"certificate's lifetime and must be at most the ocsp-signing profile's validity ({profile_days})"
        )


def _key_algorithm(name: str) -> KeyAlgorithm:
    for algorithm in KEY_ALGORITHMS:
        if algorithm == name:
            return algorithm
    raise ConfigError(f"{name!r} is not a signing key algorithm")


def keystore_summary(settings: KeyStoreSettings) -> str:
    if settings.kind == "file":
        return f"encrypted files in {settings.path}"
    return f"PKCS#11 token {settings.pkcs11_token_label!r} ({settings.pkcs11_module})"
