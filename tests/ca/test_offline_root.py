"""The root key can be kept offline: the running service never needs it."""

from __future__ import annotations

import shutil

import pytest

from govpki.errors import GovpkiError
from govpki.principal import SYSTEM
from tests.helpers import csr_pem
from web.container import Services, build_services


def test_service_runs_and_issues_with_the_root_store_removed(services: Services):
    root = services.config.root_keystore
    assert root.path is not None and root.passphrase_file is not None
    offline = root.path.parent / "carried-away"
    shutil.move(root.path, offline)
    root.passphrase_file.unlink()

    restarted = build_services(services.config)
    try:
        assert not root.passphrase_file.exists()  # start-up does not touch the root store
        with restarted.sessions() as session:
            record = restarted.ca.issue(session, SYSTEM, profile="service-tls-server", csr=csr_pem())
            session.commit()
        assert record.state == "issued"
        # a ceremony that needs the root key says so clearly
        with restarted.sessions() as session, pytest.raises(GovpkiError) as info:
            restarted.ca.create_issuing(session, SYSTEM)
        assert "no key labelled 'root-" in info.value.reason and str(root.path) in info.value.reason
    finally:
        restarted.dispose()


def test_missing_online_passphrase_stops_start_up_clearly(services: Services):
    from click.testing import CliRunner

    from web.cli import main

    online = services.config.online_keystore
    assert online.passphrase_file is not None
    online.passphrase_file.unlink()
    env = {
        "GOVPKI_INSTANCE_DIR": str(services.config.instance_dir),
        "GOVPKI_DATABASE_URL": services.config.database_url,
    }
    result = CliRunner().invoke(main, ["list"], env=env)
    assert result.exit_code == 2
    assert "cannot start" in result.output and str(online.passphrase_file) in result.output
    assert not online.passphrase_file.exists()  # never silently replaced
