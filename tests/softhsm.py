"""Real SoftHSM2 tokens for tests.

SoftHSM reads ``SOFTHSM2_CONF`` and scans its token directory only at ``C_Initialize``,
and python-pkcs11 keeps one initialised module per process. So this helper uses ONE
SoftHSM configuration per process (a private temporary token directory, removed at
exit) and, for each call, initialises another token in it with
``softhsm2-util --init-token --free`` and then re-initialises the loaded module through
:func:`keymgmt.reinitialize_module` so it sees the new token.

What callers must respect:

* :func:`make_softhsm_token` sets ``os.environ["SOFTHSM2_CONF"]`` for the whole process
  (subprocesses inherit it and see the same tokens). Don't point it elsewhere.
* Each call re-initialises the module: every open PKCS#11 session in the process dies.
  :class:`keymgmt.Pkcs11KeyStore` logs in again by itself; code that uses python-pkcs11
  directly must open new sessions after the call.
* Tokens live for the whole process. Labels are unique per process: if ``label`` was
  used already, a numbered one (``govpki-test-2``) is made. Use the returned label.
* The PIN is also written to ``tmp_path / "<label>.pin"`` (0600) for
  :class:`govpki.config.KeyStoreSettings`; see :func:`softhsm_settings`.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import pytest

from govpki.config import KeyStoreSettings
from keymgmt import reinitialize_module

MODULE = Path(os.environ.get("GOVPKI_TEST_PKCS11_MODULE", "/usr/lib/softhsm/libsofthsm2.so"))

_lock = threading.Lock()
_conf: Path | None = None
_labels: set[str] = set()


def _process_conf() -> Path:
    global _conf
    if _conf is None:
        root = Path(tempfile.mkdtemp(prefix="govpki-softhsm-"))
        atexit.register(shutil.rmtree, root, True)
        (root / "tokens").mkdir(mode=0o700)
        conf = root / "softhsm2.conf"
        conf.write_text(
            f"directories.tokendir = {root / 'tokens'}\n"
            "objectstore.backend = file\n"
            "log.level = ERROR\n"
            "slots.removable = false\n",
            encoding="utf-8",
        )
        _conf = conf
    os.environ["SOFTHSM2_CONF"] = str(_conf)
    return _conf


def _unique(label: str) -> str:
    candidate, n = label, 1
    while candidate in _labels:
        n += 1
        suffix = f"-{n}"
        candidate = label[: 32 - len(suffix)] + suffix
    _labels.add(candidate)
    return candidate


def make_softhsm_token(
    tmp_path: Path, label: str = "govpki-test", pin: str = "1234", so_pin: str = "5678"
) -> tuple[Path, Path, str, str]:
    """Initialise a new SoftHSM2 token; return ``(conf_path, module_path, label, pin)``.
    Fails the test (does not skip) when SoftHSM2 is not installed."""
    util = shutil.which("softhsm2-util")
    if util is None:
        pytest.fail("softhsm2-util is not installed: install the softhsm2 package (apt-get install softhsm2)")
    if not MODULE.is_file():
        pytest.fail(f"SoftHSM2 PKCS#11 module {MODULE} is missing: install softhsm2 or set GOVPKI_TEST_PKCS11_MODULE")
    with _lock:
        conf = _process_conf()
        label = _unique(label)
        done = subprocess.run(
            [util, "--init-token", "--free", "--label", label, "--pin", pin, "--so-pin", so_pin],
            env={**os.environ, "SOFTHSM2_CONF": str(conf)},
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            pytest.fail(f"softhsm2-util --init-token failed: {done.stderr.strip() or done.stdout.strip()}")
        reinitialize_module(MODULE)
    pin_file = tmp_path / f"{label}.pin"
    pin_file.touch(mode=0o600)
    pin_file.write_text(pin, encoding="utf-8")
    return conf, MODULE, label, pin


def softhsm_settings(tmp_path: Path, label: str = "govpki-test") -> KeyStoreSettings:
    """A new token and the ``KeyStoreSettings`` (kind ``pkcs11``) that open it."""
    _, module, label, _ = make_softhsm_token(tmp_path, label)
    return KeyStoreSettings(
        kind="pkcs11", pkcs11_module=module, pkcs11_token_label=label, pkcs11_pin_file=tmp_path / f"{label}.pin"
    )
