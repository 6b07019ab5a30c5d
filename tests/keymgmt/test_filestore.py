from __future__ import annotations

import copy
import os
import pickle
import stat
import threading
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

from govpki.config import KEY_ALGORITHMS, KeyAlgorithm, KeyStoreSettings
from govpki.errors import ConflictError, InvalidError
from keymgmt import (
    FileKeyStore,
    KeyExportRefusedError,
    KeyNotFoundError,
    KeyStore,
    KeyStoreError,
    ensure_passphrase_file,
    open_keystore,
)
from tests.keymgmt.signing_checks import sign_certificate, sign_crl

PASS = b"correct horse battery staple"


@pytest.fixture
def store(tmp_path: Path) -> FileKeyStore:
    return FileKeyStore(tmp_path / "keys", PASS)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_is_a_keystore(store: FileKeyStore) -> None:
    assert isinstance(store, KeyStore)
    assert store.kind == "file"


@pytest.mark.parametrize("algorithm", KEY_ALGORITHMS)
def test_generate_and_sign_certificate_and_crl(store: FileKeyStore, algorithm: KeyAlgorithm) -> None:
    handle = store.generate(f"ca-{algorithm}", algorithm)
    assert handle == f"file:ca-{algorithm}"
    assert store.has(handle)
    signer = store.signer(handle)
    assert store.signer(handle) is signer  # decrypted once, then cached
    cert = sign_certificate(signer)
    sign_crl(signer, cert)
    public = store.public_key(handle)
    assert public == cert.public_key()
    if algorithm.startswith("ec-"):
        assert isinstance(signer, ec.EllipticCurvePrivateKey)
        assert signer.curve.name == {"ec-p256": "secp256r1", "ec-p384": "secp384r1"}[algorithm]
    else:
        assert isinstance(signer, rsa.RSAPrivateKey)
        assert signer.key_size == int(algorithm.split("-")[1])


def test_prehashed_signing(store: FileKeyStore) -> None:
    ec_signer = store.signer(store.generate("ec", "ec-p256"))
    rsa_signer = store.signer(store.generate("rsa", "rsa-2048"))
    h = hashes.Hash(hashes.SHA256())
    h.update(b"data")
    digest = h.finalize()
    assert isinstance(ec_signer, ec.EllipticCurvePrivateKey)
    assert isinstance(rsa_signer, rsa.RSAPrivateKey)
    sig = ec_signer.sign(digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
    ec_signer.public_key().verify(sig, b"data", ec.ECDSA(hashes.SHA256()))
    sig = rsa_signer.sign(digest, padding.PKCS1v15(), utils.Prehashed(hashes.SHA256()))
    rsa_signer.public_key().verify(sig, b"data", padding.PKCS1v15(), hashes.SHA256())
    with pytest.raises(InvalidError):
        ec_signer.sign(b"short", ec.ECDSA(utils.Prehashed(hashes.SHA256())))
    with pytest.raises(InvalidError):
        rsa_signer.sign(b"data", padding.PSS(padding.MGF1(hashes.SHA256()), 32), hashes.SHA256())


def test_file_and_directory_modes(tmp_path: Path) -> None:
    directory = tmp_path / "deep" / "keys"
    store = FileKeyStore(directory, PASS)
    assert mode(directory) == 0o700
    store.generate("root", "ec-p256")
    key_file = directory / "root.key.pem"
    assert mode(key_file) == 0o600
    assert sorted(p.name for p in directory.iterdir()) == ["root.key.pem"]  # no temp files left
    assert key_file.read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert store.labels() == ["root"]


def test_loose_directory_is_tightened(tmp_path: Path) -> None:
    directory = tmp_path / "keys"
    directory.mkdir(mode=0o755)
    os.chmod(directory, 0o755)
    FileKeyStore(directory, PASS)
    assert mode(directory) == 0o700


def test_files_are_never_world_readable_even_with_open_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        store = FileKeyStore(tmp_path / "keys", PASS)
        store.generate("k", "ec-p256")
    finally:
        os.umask(old)
    assert mode(tmp_path / "keys") == 0o700
    assert mode(tmp_path / "keys" / "k.key.pem") == 0o600


def test_wrong_passphrase(tmp_path: Path) -> None:
    handle = FileKeyStore(tmp_path / "keys", PASS).generate("root", "ec-p384")
    other = FileKeyStore(tmp_path / "keys", b"not the passphrase")
    assert other.has(handle)
    with pytest.raises(KeyStoreError) as info:
        other.signer(handle)
    assert str(info.value) == "cannot decrypt key 'root': wrong passphrase or damaged file"
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_damaged_file(store: FileKeyStore) -> None:
    handle = store.generate("root", "ec-p256")
    (store.directory / "root.key.pem").write_bytes(b"-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n")
    fresh = FileKeyStore(store.directory, PASS)
    with pytest.raises(KeyStoreError, match="wrong passphrase or damaged file"):
        fresh.signer(handle)


def test_missing_key(store: FileKeyStore) -> None:
    assert not store.has("file:nope")
    with pytest.raises(KeyNotFoundError) as info:
        store.signer("file:nope")
    assert info.value.field == "handle"
    with pytest.raises(KeyNotFoundError):
        store.public_key("file:nope")
    for foreign in ("pkcs11:nope", "nope", "file:", "file:../x/y", ""):
        assert not store.has(foreign)
        with pytest.raises(KeyNotFoundError):
            store.signer(foreign)


@pytest.mark.parametrize("label", ["", "a/b", "../etc", "a b", "x" * 65, "ключ", "a\x00b", "tab\t"])
def test_bad_label(store: FileKeyStore, label: str) -> None:
    with pytest.raises(InvalidError) as info:
        store.generate(label, "ec-p256")
    assert info.value.field == "label"
    assert list(store.directory.iterdir()) == []


def test_unknown_algorithm(store: FileKeyStore) -> None:
    with pytest.raises(InvalidError) as info:
        store.generate("k", "dsa-1024")  # type: ignore[arg-type]
    assert info.value.field == "algorithm"


def test_duplicate_label(store: FileKeyStore) -> None:
    store.generate("root", "ec-p256")
    before = (store.directory / "root.key.pem").read_bytes()
    with pytest.raises(ConflictError) as info:
        store.generate("root", "ec-p384")
    assert info.value.field == "label"
    with pytest.raises(ConflictError):
        FileKeyStore(store.directory, PASS).generate("root", "rsa-2048")
    assert (store.directory / "root.key.pem").read_bytes() == before


def test_concurrent_generate_of_one_label_makes_one_key(store: FileKeyStore) -> None:
    results: list[str] = []
    barrier = threading.Barrier(4)

    def work() -> None:
        barrier.wait()
        try:
            results.append(FileKeyStore(store.directory, PASS).generate("race", "ec-p256"))
        except ConflictError:
            results.append("conflict")

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["conflict"] * 3 + ["file:race"]


@pytest.mark.parametrize("algorithm", ["ec-p256", "rsa-2048"])
def test_private_material_is_refused(store: FileKeyStore, algorithm: KeyAlgorithm) -> None:
    signer = store.signer(store.generate("k", algorithm))
    with pytest.raises(KeyExportRefusedError):
        signer.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    with pytest.raises(KeyExportRefusedError):
        signer.private_numbers()
    with pytest.raises(KeyExportRefusedError):
        pickle.dumps(signer)
    if isinstance(signer, ec.EllipticCurvePrivateKey):
        with pytest.raises(KeyExportRefusedError):
            signer.exchange(ec.ECDH(), ec.generate_private_key(ec.SECP256R1()).public_key())
    else:
        with pytest.raises(KeyExportRefusedError):
            signer.decrypt(b"x" * 256, padding.PKCS1v15())
    assert copy.copy(signer) is signer
    assert copy.deepcopy(signer) is signer
    assert "PRIVATE" not in repr(signer) and repr(signer).endswith("'file:k'>")


@pytest.mark.parametrize("algorithm", ["ec-p384", "rsa-2048"])
def test_concurrent_signing(store: FileKeyStore, algorithm: KeyAlgorithm) -> None:
    handle = store.generate("busy", algorithm)
    fresh = FileKeyStore(store.directory, PASS)  # first use (decryption) races too
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def work(n: int) -> None:
        try:
            barrier.wait()
            for i in range(10):
                sign_certificate(fresh.signer(handle), cn=f"thread {n} cert {i}")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_keys_persist_across_store_instances(tmp_path: Path) -> None:
    first = FileKeyStore(tmp_path / "keys", PASS)
    handles = {alg: first.generate(f"k-{alg}", alg) for alg in ("ec-p256", "rsa-2048")}
    public = {alg: first.public_key(h) for alg, h in handles.items()}
    again = FileKeyStore(tmp_path / "keys", PASS)
    for alg, handle in handles.items():
        assert again.has(handle)
        assert again.public_key(handle) == public[alg]
        cert = sign_certificate(again.signer(handle))
        assert cert.public_key() == public[alg]


def test_signature_from_other_key_does_not_verify(store: FileKeyStore) -> None:
    a = store.signer(store.generate("a", "ec-p256"))
    b = store.signer(store.generate("b", "ec-p256"))
    assert isinstance(a, ec.EllipticCurvePrivateKey) and isinstance(b, ec.EllipticCurvePrivateKey)
    sig = a.sign(b"data", ec.ECDSA(hashes.SHA256()))
    with pytest.raises(InvalidSignature):
        b.public_key().verify(sig, b"data", ec.ECDSA(hashes.SHA256()))


def test_empty_passphrase_refused(tmp_path: Path) -> None:
    with pytest.raises(KeyStoreError):
        FileKeyStore(tmp_path / "keys", b"")


def test_ensure_passphrase_file(tmp_path: Path) -> None:
    path = tmp_path / "secrets" / "root.pass"
    ensure_passphrase_file(path)
    assert mode(path) == 0o600
    content = path.read_bytes()
    assert len(content.strip()) == 44  # 32 bytes, URL-safe base64
    ensure_passphrase_file(path)
    assert path.read_bytes() == content  # never replaced


def test_open_keystore_file(tmp_path: Path) -> None:
    pass_file = tmp_path / "keys.pass"
    ensure_passphrase_file(pass_file)
    settings = KeyStoreSettings(kind="file", path=tmp_path / "keys", passphrase_file=pass_file)
    store = open_keystore(settings)
    assert isinstance(store, FileKeyStore)
    handle = store.generate("issuing", "ec-p384")
    sign_certificate(open_keystore(settings).signer(handle))


def test_open_keystore_missing_passphrase_file(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.pass"
    settings = KeyStoreSettings(kind="file", path=tmp_path / "keys", passphrase_file=missing)
    with pytest.raises(KeyStoreError) as info:
        open_keystore(settings)
    assert str(missing) in str(info.value)
    assert info.value.field == "passphrase_file"
