"""The PKCS#11 key store against a real SoftHSM2 token (never skipped)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

from govpki.config import KEY_ALGORITHMS, KeyAlgorithm
from govpki.errors import ConflictError, InvalidError
from keymgmt import (
    KeyExportRefusedError,
    KeyNotFoundError,
    KeyProtection,
    KeyStore,
    KeyStoreError,
    Pkcs11KeyStore,
    open_keystore,
)
from tests.keymgmt.signing_checks import sign_certificate, sign_crl
from tests.softhsm import make_softhsm_token, softhsm_settings

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def token(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    _, module, label, pin = make_softhsm_token(tmp_path_factory.mktemp("hsm"), label="keymgmt-tests")
    return module, label, pin


@pytest.fixture
def store(token: tuple[Path, str, str]) -> Pkcs11KeyStore:
    return Pkcs11KeyStore(*token)


def test_is_a_keystore(store: Pkcs11KeyStore) -> None:
    assert isinstance(store, KeyStore)
    assert store.kind == "pkcs11"


@pytest.mark.parametrize("algorithm", KEY_ALGORITHMS)
def test_generate_and_sign_certificate_and_crl(store: Pkcs11KeyStore, algorithm: KeyAlgorithm) -> None:
    handle = store.generate(f"sign-{algorithm}", algorithm)
    assert handle == f"pkcs11:sign-{algorithm}"
    assert store.has(handle)
    signer = store.signer(handle)
    cert = sign_certificate(signer)
    sign_crl(signer, cert)
    assert store.public_key(handle) == cert.public_key()
    if algorithm.startswith("ec-"):
        assert isinstance(signer, ec.EllipticCurvePrivateKey)
        assert signer.key_size == int(algorithm[-3:])
    else:
        assert isinstance(signer, rsa.RSAPrivateKey)
        assert signer.key_size == int(algorithm.split("-")[1])


def test_prehashed_and_hash_choices(store: Pkcs11KeyStore) -> None:
    ec_signer = store.signer(store.generate("prehash-ec", "ec-p256"))
    rsa_signer = store.signer(store.generate("prehash-rsa", "rsa-2048"))
    assert isinstance(ec_signer, ec.EllipticCurvePrivateKey)
    assert isinstance(rsa_signer, rsa.RSAPrivateKey)
    for hash_ in (hashes.SHA256(), hashes.SHA384(), hashes.SHA512()):
        sig = ec_signer.sign(b"data", ec.ECDSA(hash_))
        ec_signer.public_key().verify(sig, b"data", ec.ECDSA(hash_))
        sig = rsa_signer.sign(b"data", padding.PKCS1v15(), hash_)
        rsa_signer.public_key().verify(sig, b"data", padding.PKCS1v15(), hash_)
    h = hashes.Hash(hashes.SHA384())
    h.update(b"data")
    digest = h.finalize()
    sig = rsa_signer.sign(digest, padding.PKCS1v15(), utils.Prehashed(hashes.SHA384()))
    rsa_signer.public_key().verify(sig, b"data", padding.PKCS1v15(), hashes.SHA384())
    sig = ec_signer.sign(digest, ec.ECDSA(utils.Prehashed(hashes.SHA384())))
    ec_signer.public_key().verify(sig, b"data", ec.ECDSA(hashes.SHA384()))
    with pytest.raises(InvalidError):
        rsa_signer.sign(b"data", padding.PKCS1v15(), hashes.SHA3_256())


def test_key_is_not_extractable(store: Pkcs11KeyStore) -> None:
    algorithms: tuple[KeyAlgorithm, ...] = ("ec-p256", "rsa-2048")
    for algorithm in algorithms:
        handle = store.generate(f"locked-{algorithm}", algorithm)
        assert store.protection(handle) == KeyProtection(
            token=True, private=True, sensitive=True, extractable=False, always_sensitive=True, never_extractable=True
        )
        with pytest.raises(KeyExportRefusedError, match="refuses to export"):
            store.export_private_key(handle)
        signer = store.signer(handle)
        with pytest.raises(KeyExportRefusedError):
            signer.private_bytes(
                serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        with pytest.raises(KeyExportRefusedError):
            signer.private_numbers()


def test_missing_key(store: Pkcs11KeyStore) -> None:
    assert not store.has("pkcs11:absent")
    assert not store.has("file:absent")
    with pytest.raises(KeyNotFoundError):
        store.signer("pkcs11:absent")
    with pytest.raises(KeyNotFoundError):
        store.public_key("pkcs11:absent")
    with pytest.raises(KeyNotFoundError):
        store.export_private_key("pkcs11:absent")


@pytest.mark.parametrize("label", ["", "a/b", "a b", "x" * 65, "ключ"])
def test_bad_label(store: Pkcs11KeyStore, label: str) -> None:
    with pytest.raises(InvalidError) as info:
        store.generate(label, "ec-p256")
    assert info.value.field == "label"


def test_duplicate_label(store: Pkcs11KeyStore, token: tuple[Path, str, str]) -> None:
    store.generate("twice", "ec-p256")
    with pytest.raises(ConflictError) as info:
        store.generate("twice", "rsa-2048")
    assert info.value.field == "label"
    with pytest.raises(ConflictError):
        Pkcs11KeyStore(*token).generate("twice", "ec-p384")


def test_wrong_pin(tmp_path: Path) -> None:
    _, module, label, pin = make_softhsm_token(tmp_path, label="wrong-pin")
    with pytest.raises(KeyStoreError, match="wrong PIN") as info:
        Pkcs11KeyStore(module, label, "0000")  # the token refuses C_Login
    assert info.value.field == "pin"
    Pkcs11KeyStore(module, label, pin)  # now logged in for this process
    with pytest.raises(KeyStoreError, match="wrong PIN"):
        Pkcs11KeyStore(module, label, "0000")


def test_missing_token(token: tuple[Path, str, str]) -> None:
    module, _, pin = token
    with pytest.raises(KeyStoreError, match="there is no token 'no-such-token'"):
        Pkcs11KeyStore(module, "no-such-token", pin)


def test_missing_module(tmp_path: Path) -> None:
    with pytest.raises(KeyStoreError, match="cannot load PKCS#11 module"):
        Pkcs11KeyStore(tmp_path / "libnothing.so", "x", "1234")


@pytest.mark.parametrize("algorithm", ["ec-p384", "rsa-2048"])
def test_concurrent_signing(store: Pkcs11KeyStore, algorithm: KeyAlgorithm) -> None:
    handle = store.generate(f"busy-{algorithm}", algorithm)
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def work(n: int) -> None:
        try:
            barrier.wait()
            for i in range(10):
                sign_certificate(store.signer(handle), cn=f"thread {n} cert {i}")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_stores_survive_module_reinitialisation(store: Pkcs11KeyStore, tmp_path: Path) -> None:
    signer = store.signer(store.generate("survivor", "ec-p256"))
    _, module, label, pin = make_softhsm_token(tmp_path, label="second-token")
    other_store = Pkcs11KeyStore(module, label, pin)
    other = other_store.signer(other_store.generate("survivor", "ec-p256"))  # same label, other token
    sign_certificate(signer)
    sign_certificate(other)
    make_softhsm_token(tmp_path, label="third-token")  # C_Finalize + C_Initialize: all sessions die
    # Both log in again by themselves; the second store's new session must not be
    # mistaken for the first one's old (now recycled) session handle.
    for _ in range(2):
        assert sign_certificate(other).public_key() == other.public_key()
        assert sign_certificate(signer).public_key() == signer.public_key()
    assert signer.public_key() != other.public_key()
    assert store.has("pkcs11:survivor")


def test_keys_persist_across_instances_and_processes(store: Pkcs11KeyStore, token: tuple[Path, str, str]) -> None:
    module, label, pin = token
    handles = [store.generate("persist-ec", "ec-p384"), store.generate("persist-rsa", "rsa-2048")]
    public = [store.public_key(h) for h in handles]
    again = Pkcs11KeyStore(module, label, pin)
    assert [again.public_key(h) for h in handles] == public
    for handle in handles:
        sign_certificate(again.signer(handle))

    # A separate process reads the token from disk (same SOFTHSM2_CONF) and signs.
    script = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from cryptography.hazmat.primitives import serialization\n"
        "from keymgmt import Pkcs11KeyStore\n"
        "from tests.keymgmt.signing_checks import sign_certificate\n"
        "module, label, pin, handles = json.loads(sys.argv[1])\n"
        "store = Pkcs11KeyStore(Path(module), label, pin)\n"
        "out = [sign_certificate(store.signer(h)).public_bytes(serialization.Encoding.PEM).decode() for h in handles]\n"
        "print(json.dumps(out))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, json.dumps([str(module), label, pin, handles])],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    from cryptography import x509

    certs = [x509.load_pem_x509_certificate(pem.encode()) for pem in json.loads(done.stdout)]
    assert [c.public_key() for c in certs] == public


def test_open_keystore_pkcs11(tmp_path: Path) -> None:
    settings = softhsm_settings(tmp_path, label="open-keystore")
    store = open_keystore(settings)
    assert isinstance(store, Pkcs11KeyStore)
    handle = store.generate("issuing", "ec-p384")
    sign_certificate(open_keystore(settings).signer(handle))


def test_open_keystore_missing_pin_file(tmp_path: Path, token: tuple[Path, str, str]) -> None:
    from govpki.config import KeyStoreSettings

    module, label, _ = token
    missing = tmp_path / "no.pin"
    settings = KeyStoreSettings(kind="pkcs11", pkcs11_module=module, pkcs11_token_label=label, pkcs11_pin_file=missing)
    with pytest.raises(KeyStoreError) as info:
        open_keystore(settings)
    assert str(missing) in str(info.value)
