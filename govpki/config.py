"""Configuration from ``GOVPKI_*`` environment variables; secrets come from files.

Everything has a default that gives a working demo instance under ``./instance``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from govpki.errors import ConfigError
from govpki.mailaddr import address_problem

KeyStoreKind = Literal["file", "pkcs11"]
KeyAlgorithm = Literal["ec-p256", "ec-p384", "rsa-2048", "rsa-3072", "rsa-4096"]
KEY_ALGORITHMS: tuple[KeyAlgorithm, ...] = ("ec-p256", "ec-p384", "rsa-2048", "rsa-3072", "rsa-4096")
# what the key-management centre makes for escrowed (encryption) key pairs
KMC_KEY_ALGORITHMS: tuple[KeyAlgorithm, ...] = ("rsa-2048", "rsa-3072", "ec-p256")

PACKAGE_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class KeyStoreSettings:
    """Where one key store lives. ``file``: a folder of encrypted PKCS#8 files.
    ``pkcs11``: a token of a PKCS#11 module (an HSM; SoftHSM2 in tests)."""

    kind: KeyStoreKind
    path: Path | None = None
    passphrase_file: Path | None = None
    pkcs11_module: Path | None = None
    pkcs11_token_label: str | None = None
    pkcs11_pin_file: Path | None = None


@dataclass(frozen=True)
class SmtpSettings:
    """The mail server expiry notices go through. The password stays in its file
    (read when connecting), never in the configuration object or a log line."""

    host: str
    port: int = 25
    sender: str = ""
    starttls: bool = False
    username: str | None = None
    password_file: Path | None = None
    timeout_seconds: float = 30.0

    def password(self) -> str | None:
        if self.password_file is None:
            return None
        return self.password_file.read_text(encoding="utf-8").strip()


@dataclass(frozen=True)
class Config:
    instance_dir: Path
    database_url: str
    base_url: str
    listen_host: str
    listen_port: int
    workers: int
    threads: int
    secret_key_file: Path
    root_keystore: KeyStoreSettings
    online_keystore: KeyStoreSettings
    root_key_algorithm: KeyAlgorithm
    issuing_key_algorithm: KeyAlgorithm
    province: str
    organization: str
    root_ca_name: str
    issuing_ca_name: str
    root_validity_days: int
    issuing_validity_days: int
    region_file: Path
    profiles_file: Path
    api_token_days: int
    extra_trust_anchors_file: Path | None = None
    # revocation: CRL and OCSP timing
    crl_validity_hours: int = 24  # full CRL: nextUpdate - thisUpdate
    crl_refresh_hours: int = 6  # a new full CRL when the newest is this old
    delta_crl_validity_minutes: int = 60
    delta_crl_refresh_minutes: int = 15
    arl_validity_days: int = 30  # the root's CRL (signed at ceremonies; the root key is offline)
    ocsp_validity_hours: int = 24  # pre-signed responses: nextUpdate - thisUpdate
    ocsp_refresh_hours: int = 12  # re-sign a response when it is this old
    tlog_sth_minutes: int = 10  # the jobs sign a transparency log tree head this often (when the log grew)
    jobs_interval_seconds: int = 60  # how often `serve` runs the due jobs (CRLs, OCSP); 0: never
    # the dedicated OCSP responder (`govpki ocsp serve`; `serve` starts it too): None is "off"
    ocsp_listen: tuple[str, int] | None = ("127.0.0.1", 8001)
    ocsp_workers: int = 2  # its processes (one port, SO_REUSEPORT)
    # signed audit checkpoints: how often the job signs one, where they are exported
    audit_checkpoint_minutes: int = 60
    audit_checkpoint_file: Path | None = None  # None: <instance>/audit-checkpoints.jsonl
    audit_syslog: bool = False  # also send each exported checkpoint to syslog
    # key policy (algorithms, lifetime, rotation overlap per key purpose); None: the shipped file
    key_policy_file: Path | None = None
    # retention: entries older than this are archived to signed files, then removed (floor 180 days)
    audit_retention_days: int = 365
    audit_archive_dir: Path | None = None  # None: <instance>/audit-archive
    # expiry notices: thresholds in days (the largest is the window), mail over SMTP (None: only list)
    expiry_notice_days: tuple[int, ...] = (30,)
    expiry_notice_ra_mailbox: str | None = None  # address or template with {prefecture} (the area code)
    smtp: SmtpSettings | None = None
    # key-management centre: where its storage key lives (None: the online store), what it
    # makes, and M-of-N recovery (M approvals needed; at least N officers must exist)
    kmc_keystore: KeyStoreSettings | None = None
    kmc_key_algorithm: KeyAlgorithm = "rsa-2048"
    kmc_recovery_m: int = 2
    kmc_recovery_n: int = 3
    # staff sign-in: lock-out after this many failures (password or TOTP) within the window
    signin_max_failures: int = 5
    signin_failure_window_minutes: int = 15
    signin_lockout_minutes: int = 15
    # the Secure flag on the portal's cookies; None: on when GOVPKI_BASE_URL is https
    cookie_secure: bool | None = None
    # access decisions: deciders re-read the policy version at most this often (0: every decision)
    authz_policy_refresh_ms: int = 1000
    # the OpenID Connect provider: lifetimes (authorization code, access token, ID token, refresh token)
    oidc_code_seconds: int = 60
    oidc_access_token_minutes: int = 10
    oidc_id_token_minutes: int = 10
    oidc_refresh_token_hours: int = 8
    # addresses/networks of the TLS front whose client-certificate headers are believed (empty: none)
    trusted_proxies: str = ""
    # the dedicated access decision server (govpki authz serve); None: off (the default)
    authz_listen: tuple[str, int] | None = None
    authz_workers: int = 2  # its processes (one port, SO_REUSEPORT)
    testing: bool = False

    @property
    def expiry_window_days(self) -> int:
        return max(self.expiry_notice_days)

    @property
    def checkpoint_file(self) -> Path:
        return self.audit_checkpoint_file or self.instance_dir / "audit-checkpoints.jsonl"

    @property
    def archive_dir(self) -> Path:
        return self.audit_archive_dir or self.instance_dir / "audit-archive"

    @property
    def secure_cookies(self) -> bool:
        return self.base_url.startswith("https://") if self.cookie_secure is None else self.cookie_secure

    @property
    def listen_url(self) -> str:
        return f"http://{self.listen_host}:{self.listen_port}"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Config:
        env = dict(os.environ if environ is None else environ)

        def get(name: str, default: str) -> str:
            value = env.get(f"GOVPKI_{name}")
            return default if value is None or value == "" else value

        def secret(name: str, default: str) -> str:
            path = env.get(f"GOVPKI_{name}_FILE")
            if path:
                try:
                    return Path(path).read_text(encoding="utf-8").strip()
                except OSError as exc:
                    raise ConfigError(f"GOVPKI_{name}_FILE: cannot read {path}: {exc.strerror}") from exc
            return get(name, default)

        def integer(name: str, default: int, minimum: int = 1) -> int:
            raw = get(name, str(default))
            try:
                value = int(raw)
            except ValueError:
                raise ConfigError(f"GOVPKI_{name}: {raw!r} is not a whole number") from None
            if value < minimum:
                raise ConfigError(f"GOVPKI_{name}: must be at least {minimum}, got {value}")
            return value

        def algorithm(name: str, default: KeyAlgorithm) -> KeyAlgorithm:
            raw = get(name, default)
            for alg in KEY_ALGORITHMS:
                if alg == raw:
                    return alg
            raise ConfigError(f"GOVPKI_{name}: {raw!r} is not one of {', '.join(KEY_ALGORITHMS)}")

        def flag(name: str) -> bool:
            raw = get(name, "0")
            if raw not in ("0", "1"):
                raise ConfigError(f"GOVPKI_{name}: {raw!r} is not 0 or 1")
            return raw == "1"

        instance = Path(get("INSTANCE_DIR", "instance")).resolve()

        def store(prefix: str, default_dir: Path) -> KeyStoreSettings:
            kind = get(f"{prefix}KEYSTORE", "file")
            if kind not in ("file", "pkcs11"):
                raise ConfigError(f"GOVPKI_{prefix}KEYSTORE: {kind!r} is not 'file' or 'pkcs11'")
            if kind == "file":
                return KeyStoreSettings(
                    kind="file",
                    path=Path(get(f"{prefix}KEYSTORE_DIR", str(default_dir))),
                    passphrase_file=Path(
                        get(f"{prefix}KEYSTORE_PASSPHRASE_FILE", str(default_dir.parent / f"{default_dir.name}.pass"))
                    ),
                )
            module = get(f"{prefix}PKCS11_MODULE", "/usr/lib/softhsm/libsofthsm2.so")
            label = get(f"{prefix}PKCS11_TOKEN_LABEL", "")
            pin = get(f"{prefix}PKCS11_PIN_FILE", "")
            if not label or not pin:
                raise ConfigError(
                    f"GOVPKI_{prefix}KEYSTORE=pkcs11 needs GOVPKI_{prefix}PKCS11_TOKEN_LABEL "
                    f"and GOVPKI_{prefix}PKCS11_PIN_FILE"
                )
            return KeyStoreSettings(
                kind="pkcs11", pkcs11_module=Path(module), pkcs11_token_label=label, pkcs11_pin_file=Path(pin)
            )

        def address(name: str, default: str) -> tuple[str, int]:
            listen = get(name, default)
            host, _, port_text = listen.rpartition(":")
            if not host or not port_text.isdigit() or int(port_text) > 65535:
                raise ConfigError(f"GOVPKI_{name}: {listen!r} is not HOST:PORT")
            return host, int(port_text)

        for moved in ("OCSP_RESPONDER_DAYS", "OCSP_RESPONDER_RENEW_DAYS"):
            if get(moved, ""):
                raise ConfigError(
                    f"GOVPKI_{moved} is replaced by the key policy: set lifetime_days and overlap_days of "
                    "[purposes.ocsp_signing] in a policy file named by GOVPKI_KEY_POLICY_FILE"
                )

        def day_list(name: str, default: str) -> tuple[int, ...]:
            raw = get(name, default)
            parts = [p.strip() for p in raw.split(",")]
            if not all(p.isdigit() and 1 <= int(p) <= 3650 for p in parts):
                raise ConfigError(f"GOVPKI_{name}: {raw!r} is not a comma-separated list of days (1-3650), e.g. 30,7,1")
            return tuple(sorted({int(p) for p in parts}, reverse=True))

        def mailbox(name: str, value: str) -> str:
            problem = address_problem(value)
            if problem is not None:
                raise ConfigError(f"GOVPKI_{name}: {value!r} {problem}")
            return value

        def ra_mailbox() -> str | None:
            template = get("EXPIRY_NOTICE_RA_MAILBOX", "")
            if not template:
                return None
            try:
                sample = template.format(prefecture="650100")
            except (KeyError, IndexError, ValueError):
                raise ConfigError(
                    f"GOVPKI_EXPIRY_NOTICE_RA_MAILBOX: {template!r} may use only the placeholder {{prefecture}}"
                ) from None
            mailbox("EXPIRY_NOTICE_RA_MAILBOX", sample)
            return template

        def port_number(name: str, default: int) -> int:
            value = integer(name, default)
            if value > 65535:
                raise ConfigError(f"GOVPKI_{name}: {value} is not a TCP port (1-65535)")
            return value

        def smtp() -> SmtpSettings | None:
            smtp_host = get("SMTP_HOST", "")
            if not smtp_host:
                return None
            sender = get("SMTP_FROM", "")
            if not sender:
                raise ConfigError("GOVPKI_SMTP_HOST is set: GOVPKI_SMTP_FROM (the sender address) is needed too")
            username = get("SMTP_USERNAME", "") or None
            password = get("SMTP_PASSWORD_FILE", "")
            if bool(username) != bool(password):
                raise ConfigError(
                    "GOVPKI_SMTP_USERNAME and GOVPKI_SMTP_PASSWORD_FILE go together: give both or neither"
                )
            if password and not Path(password).is_file():
                raise ConfigError(f"GOVPKI_SMTP_PASSWORD_FILE: {password} is not a readable file")
            return SmtpSettings(
                host=smtp_host,
                port=port_number("SMTP_PORT", 25),
                sender=mailbox("SMTP_FROM", sender),
                starttls=flag("SMTP_STARTTLS"),
                username=username,
                password_file=Path(password) if password else None,
            )

        kmc_kind = get("KMC_KEYSTORE", "online")
        if kmc_kind not in ("online", "file", "pkcs11"):
            raise ConfigError(f"GOVPKI_KMC_KEYSTORE: {kmc_kind!r} is not 'online', 'file' or 'pkcs11'")
        kmc_store = None if kmc_kind == "online" else store("KMC_", instance / "keys" / "kmc")
        kmc_algorithm = algorithm("KMC_KEY_ALGORITHM", "rsa-2048")
        if kmc_algorithm not in KMC_KEY_ALGORITHMS:
            raise ConfigError(f"GOVPKI_KMC_KEY_ALGORITHM: must be one of {', '.join(KMC_KEY_ALGORITHMS)}")
        recovery_m, recovery_n = integer("KMC_RECOVERY_M", 2, minimum=2), integer("KMC_RECOVERY_N", 3, minimum=2)
        if recovery_m > recovery_n:
            raise ConfigError(
                f"GOVPKI_KMC_RECOVERY_M ({recovery_m}) cannot exceed GOVPKI_KMC_RECOVERY_N ({recovery_n})"
            )

        cookie_raw = get("COOKIE_SECURE", "auto")
        if cookie_raw not in ("auto", "0", "1"):
            raise ConfigError(f"GOVPKI_COOKIE_SECURE: {cookie_raw!r} is not auto, 0 or 1")
        cookie_secure = None if cookie_raw == "auto" else cookie_raw == "1"

        host, port = address("LISTEN", "127.0.0.1:8000")
        default_base = f"http://{host}:{port}"
        ocsp_listen = None if get("OCSP_LISTEN", "").lower() == "off" else address("OCSP_LISTEN", "127.0.0.1:8001")
        authz_listen = None if get("AUTHZ_LISTEN", "off").lower() in ("off", "") else address("AUTHZ_LISTEN", "")

        def bounded(name: str, default: int, minimum: int, maximum: int) -> int:
            value = integer(name, default, minimum)
            if value > maximum:
                raise ConfigError(f"GOVPKI_{name}: must be at most {maximum}, got {value}")
            return value

        oidc_code_seconds = bounded("OIDC_CODE_SECONDS", 60, 10, 600)  # RFC 6749 §4.1.2: at most 10 minutes
        oidc_access_minutes = bounded("OIDC_ACCESS_TOKEN_MINUTES", 10, 1, 1440)
        oidc_id_minutes = bounded("OIDC_ID_TOKEN_MINUTES", 10, 1, 1440)
        oidc_refresh_hours = bounded("OIDC_REFRESH_TOKEN_HOURS", 8, 1, 24 * 90)
        if oidc_refresh_hours * 60 < oidc_access_minutes:
            raise ConfigError(
                f"GOVPKI_OIDC_REFRESH_TOKEN_HOURS: a refresh token ({oidc_refresh_hours} h) must live at least as "
                f"long as an access token (GOVPKI_OIDC_ACCESS_TOKEN_MINUTES={oidc_access_minutes})"
            )

        return cls(
            instance_dir=instance,
            database_url=secret("DATABASE_URL", f"sqlite:///{instance / 'govpki.sqlite3'}"),
            base_url=get("BASE_URL", default_base).rstrip("/"),
            listen_host=host,
            listen_port=port,
            workers=integer("WORKERS", 2),
            threads=integer("THREADS", 2),
            secret_key_file=Path(get("SECRET_KEY_FILE", str(instance / "secret_key"))),
            root_keystore=store("ROOT_", instance / "keys" / "root"),
            online_keystore=store("", instance / "keys" / "online"),
            root_key_algorithm=algorithm("ROOT_KEY_ALGORITHM", "ec-p384"),
            issuing_key_algorithm=algorithm("ISSUING_KEY_ALGORITHM", "ec-p384"),
            province=get("PROVINCE", "新疆维吾尔自治区"),
            organization=get("ORGANIZATION", "新疆维吾尔自治区电子政务外网"),
            root_ca_name=get("ROOT_CA_NAME", "新疆政务外网根CA"),
            issuing_ca_name=get("ISSUING_CA_NAME", "新疆政务外网业务CA"),
            root_validity_days=integer("ROOT_VALIDITY_DAYS", 20 * 365),
            issuing_validity_days=integer("ISSUING_VALIDITY_DAYS", 10 * 365),
            region_file=Path(get("REGION_FILE", str(PACKAGE_ROOT / "ra" / "data" / "xinjiang.json"))),
            profiles_file=Path(get("PROFILES_FILE", str(PACKAGE_ROOT / "ca" / "data" / "profiles.toml"))),
            api_token_days=integer("API_TOKEN_DAYS", 90),
            extra_trust_anchors_file=Path(anchors) if (anchors := get("EXTRA_TRUST_ANCHORS_FILE", "")) else None,
            crl_validity_hours=integer("CRL_VALIDITY_HOURS", 24),
            crl_refresh_hours=integer("CRL_REFRESH_HOURS", 6),
            delta_crl_validity_minutes=integer("DELTA_CRL_VALIDITY_MINUTES", 60),
            delta_crl_refresh_minutes=integer("DELTA_CRL_REFRESH_MINUTES", 15),
            arl_validity_days=integer("ARL_VALIDITY_DAYS", 30),
            ocsp_validity_hours=integer("OCSP_VALIDITY_HOURS", 24),
            ocsp_refresh_hours=integer("OCSP_REFRESH_HOURS", 12),
            tlog_sth_minutes=integer("TLOG_STH_MINUTES", 10),
            jobs_interval_seconds=integer("JOBS_INTERVAL_SECONDS", 60, minimum=0),
            ocsp_listen=ocsp_listen,
            ocsp_workers=integer("OCSP_WORKERS", 2),
            audit_checkpoint_minutes=integer("AUDIT_CHECKPOINT_MINUTES", 60),
            audit_checkpoint_file=Path(get("AUDIT_CHECKPOINT_FILE", str(instance / "audit-checkpoints.jsonl"))),
            audit_syslog=flag("AUDIT_SYSLOG"),
            key_policy_file=Path(policy) if (policy := get("KEY_POLICY_FILE", "")) else None,
            # the floor is the law's (six months of logs), not a default: a lower value is an error
            audit_retention_days=integer("AUDIT_RETENTION_DAYS", 365, minimum=180),
            audit_archive_dir=Path(get("AUDIT_ARCHIVE_DIR", str(instance / "audit-archive"))),
            expiry_notice_days=day_list("EXPIRY_NOTICE_DAYS", "30"),
            expiry_notice_ra_mailbox=ra_mailbox(),
            smtp=smtp(),
            kmc_keystore=kmc_store,
            kmc_key_algorithm=kmc_algorithm,
            kmc_recovery_m=recovery_m,
            kmc_recovery_n=recovery_n,
            signin_max_failures=integer("SIGNIN_MAX_FAILURES", 5),
            signin_failure_window_minutes=integer("SIGNIN_FAILURE_WINDOW_MINUTES", 15),
            signin_lockout_minutes=integer("SIGNIN_LOCKOUT_MINUTES", 15),
            cookie_secure=cookie_secure,
            authz_policy_refresh_ms=integer("AUTHZ_POLICY_REFRESH_MS", 1000, minimum=0),
            oidc_code_seconds=oidc_code_seconds,
            oidc_access_token_minutes=oidc_access_minutes,
            oidc_id_token_minutes=oidc_id_minutes,
            oidc_refresh_token_hours=oidc_refresh_hours,
            trusted_proxies=get("TRUSTED_PROXIES", ""),
            authz_listen=authz_listen,
            authz_workers=integer("AUTHZ_WORKERS", 2, minimum=1),
            testing=get("TESTING", "0") == "1",
        )
