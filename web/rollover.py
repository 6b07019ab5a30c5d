"""CA key rollover and the steps of key ceremonies, each step its own unit of work
(like :mod:`web.bootstrap`): the issuance ledger commits on its own, so a step that
issues must start from a committed session. What each step made goes into an
:class:`ca.ceremony.Outcome` for the ceremony record.

* :func:`root_key`: a new root key and self-signed root, and its first ARL.
* :func:`sign_issuing`: a new issuing CA under the active root — the first one, or a
  rollover of the active one (which then only serves CRLs and OCSP for what it
  issued) — with its first CRL and its delegated OCSP responder.
* :func:`rollover`: the issuing CA rollover, or with ``root=True`` first the root
  rollover (new root, cross-certificates both ways, the new root's first ARL and a
  fresh one of the old root, both keys being at hand) and
  then a new issuing CA under the new root.
"""

from __future__ import annotations

from ca.ceremony import Outcome
from ca.models import CaKind, CertificateAuthority, CrlKind
from govpki.errors import NotFoundError
from govpki.principal import Principal
from web.container import Services


def root_key(services: Services, principal: Principal, outcome: Outcome) -> CertificateAuthority:
    with services.sessions() as session:
        root = services.ca.create_root(session, principal)
        session.commit()
    outcome.cas.append(root)
    outcome.actions.append(
        f"generated a new root key ({root.key_algorithm}) in the root key store and self-signed root CA "
        f"{root.id} ({root.name})"
    )
    _arl(services, principal, root, outcome)
    return root


def sign_issuing(services: Services, principal: Principal, outcome: Outcome) -> CertificateAuthority:
    with services.sessions() as session:
        try:
            current: CertificateAuthority | None = services.ca.active_ca(session, CaKind.ISSUING)
        except NotFoundError:
            current = None
        if current is None:
            new = services.ca.create_issuing(session, principal)
            session.commit()
            assert new.parent_id is not None
            outcome.actions.append(
                f"generated a new issuing CA key ({new.key_algorithm}) in the online key store; root CA "
                f"{new.parent_id} signed issuing CA {new.id} ({new.name})"
            )
        else:
            made = services.ca.rollover_issuing(session, principal)
            session.commit()
            new = made.new
            outcome.actions.append(
                f"issuing CA rollover: generated a new key ({new.key_algorithm}) in the online key store; root CA "
                f"{new.parent_id} signed issuing CA {new.id} ({new.name}), which issues every new certificate "
                f"from now on; CA {made.old.id} ({made.old.name}) issues no more and keeps signing CRLs and "
                "OCSP responses for its certificates until the last one expires"
            )
    outcome.cas.append(new)
    with services.sessions() as session:
        crl = services.crl.generate(session, principal, new.id, CrlKind.FULL)
        session.commit()
    outcome.crls.append(crl)
    outcome.actions.append(f"signed the first CRL (number {crl.number}) of CA {new.id}")
    with services.sessions() as session:
        responder = services.ocsp.ensure_responder(session, principal, new)
        session.commit()
    outcome.actions.append(
        f"issued the delegated OCSP responder certificate of CA {new.id} (until {responder.not_after:%Y-%m-%d})"
    )
    return new


def rollover(services: Services, principal: Principal, outcome: Outcome, *, root: bool = False) -> None:
    if root:
        with services.sessions() as session:
            made = services.ca.rollover_root(session, principal)
            session.commit()
        outcome.cas.append(made.new)
        outcome.crosses.extend(made.crosses)
        outcome.actions.append(
            f"root rollover: generated a new root key ({made.new.key_algorithm}) in the root key store and self-signed "
            f"root CA {made.new.id} ({made.new.name}); root CA {made.old.id} ({made.old.name}) certifies no more "
            "CAs and stays a trust anchor until retired"
        )
        for cross in made.crosses:
            outcome.actions.append(
                f"signed cross-certificate {cross.id} ({cross.direction}): {cross.subject} under {cross.issuer}"
            )
        _arl(services, principal, made.new, outcome)
        _arl(services, principal, made.old, outcome)  # a fresh ARL of the old root while its key is at hand
    sign_issuing(services, principal, outcome)


def _arl(services: Services, principal: Principal, root: CertificateAuthority, outcome: Outcome) -> None:
    with services.sessions() as session:
        arl = services.crl.generate(session, principal, root.id, CrlKind.FULL)
        session.commit()
    outcome.crls.append(arl)
    outcome.actions.append(f"signed the ARL (number {arl.number}) of root CA {root.id}")
