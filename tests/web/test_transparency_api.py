"""The transparency log's public REST API (RFC 6962 style): tree head, proofs by
leaf hash, consistency, entries; bad parameters are 4xx problems naming the field."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from flask.testing import FlaskClient

from ca import merkle
from govpki.principal import SYSTEM
from tests.helpers import csr_pem
from web.container import Services

API = "/api/v1/transparency"


def _b(text: str) -> bytes:
    return base64.b64decode(text)


def _sign(services: Services) -> None:
    with services.sessions() as session:
        services.tlog.sign_tree_head(session, SYSTEM)
        session.commit()


def test_sth_proofs_and_entries_verify(services: Services, client: FlaskClient) -> None:
    assert client.get(f"{API}/sth").status_code == 404
    serials = []
    for cn in ("a.example.gov.cn", "b.example.gov.cn"):
        with services.sessions() as session:
            serials.append(services.ca.issue(session, SYSTEM, profile="service-tls-server", csr=csr_pem(cn=cn)).serial)
            session.commit()
    with services.sessions() as session:
        services.revocation.revoke(session, SYSTEM, serials[0], reason="keyCompromise")
        session.commit()
    _sign(services)
    sth = client.get(f"{API}/sth").get_json()  # no token: the log is public
    assert sth["tree_size"] == 5
    key = serialization.load_der_public_key(_b(sth["public_key"]))
    assert isinstance(key, ec.EllipticCurvePublicKey)
    key.verify(_b(sth["tree_head_signature"]), _b(sth["signed_data"]), ec.ECDSA(hashes.SHA256()))
    root = _b(sth["sha256_root_hash"])

    entries = client.get(f"{API}/entries?start=0&end=99").get_json()["entries"]
    assert [e["kind"] for e in entries] == ["issue", "issue", "issue", "issue", "revoke"]
    assert [e["serial"] for e in entries[2:]] == [serials[0], serials[1], serials[0]]
    leaf_hashes = [merkle.leaf_hash(_b(e["leaf"])) for e in entries]
    assert [h.hex() for h in leaf_hashes] == [e["leaf_hash"] for e in entries]
    assert merkle.root_from_leaf_hashes(leaf_hashes) == root

    for index, leaf in enumerate(leaf_hashes):  # hex and base64 both accepted
        for given in (leaf.hex(), base64.urlsafe_b64encode(leaf).decode()):
            proof = client.get(f"{API}/proof-by-hash", query_string={"hash": given, "tree_size": 5}).get_json()
            assert proof["leaf_index"] == index
            path = [_b(p) for p in proof["audit_path"]]
            assert merkle.verify_inclusion(index, 5, leaf, path, root)

    for first in range(0, 6):
        body = client.get(f"{API}/consistency?first={first}&second=5").get_json()
        r1 = merkle.root_from_leaf_hashes(leaf_hashes[:first])
        assert body["first_root_hash"] == r1.hex()
        assert merkle.verify_consistency(first, 5, r1, root, [_b(p) for p in body["consistency"]])


@pytest.mark.parametrize(
    ("query", "field", "status"),
    [
        ("/proof-by-hash?tree_size=2", "hash", 422),
        ("/proof-by-hash?hash=zz&tree_size=2", "hash", 422),
        ("/proof-by-hash?hash=" + "00" * 32 + "&tree_size=2", "hash", 404),
        ("/proof-by-hash?hash=" + "00" * 32, "tree_size", 422),
        ("/proof-by-hash?hash=" + "00" * 32 + "&tree_size=x", "tree_size", 422),
        ("/proof-by-hash?hash=" + "00" * 32 + "&tree_size=3", "tree_size", 422),
        ("/consistency?first=1", "second", 422),
        ("/consistency?first=2&second=1", "first", 422),
        ("/consistency?first=-1&second=1", "first", 422),
        ("/consistency?first=1&second=99999999999999999999999", "second", 422),
        ("/entries?start=5&end=1", "end", 422),
        ("/entries?end=1", "start", 422),
        ("/entries?start=1.5&end=1", "start", 422),
    ],
)
def test_bad_parameters_are_problems_naming_the_field(client: FlaskClient, query: str, field: str, status: int) -> None:
    response = client.get(API + query)
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/problem+json"
    assert response.get_json()["errors"][0]["field"] == field


def test_entries_are_capped_and_registered_in_openapi(client: FlaskClient) -> None:
    assert client.get(f"{API}/entries?start=100&end=200").get_json() == {"entries": []}
    doc = client.get("/api/v1/openapi.json").get_json()
    for path in ("sth", "proof-by-hash", "consistency", "entries"):
        op = doc["paths"][f"{API}/{path}"]["get"]
        assert "security" not in op
