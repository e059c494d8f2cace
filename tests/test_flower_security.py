"""TLS and SuperNode authentication on a localhost Flower deployment (real processes, slow).

The certificates are made here: a self-signed CA and a server certificate for IP:127.0.0.1
signed by it (the ``cryptography`` package, which flwr depends on). SuperNode authentication
(``flower-superlink --enable-supernode-auth``) needs TLS in flwr 1.42.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import time
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from diversefl.flower import FLOWER_AVAILABLE

pytestmark = [
    pytest.mark.skipif(
        not FLOWER_AVAILABLE, reason='flwr is not installed: pip install -e ".[flower]"'
    ),
]

if FLOWER_AVAILABLE:
    from test_flower import _leftovers

    from diversefl.flower.deploy import LocalFederation, TlsFiles


def make_certificates(directory: Path, ip: str = "127.0.0.1") -> TlsFiles:
    """A self-signed CA (``ca.crt``) and a server certificate (``server.pem``, SAN IP:``ip``)
    with its key (``server.key``) signed by that CA, valid for a day."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    valid = {
        "not_valid_before": now - dt.timedelta(minutes=5),
        "not_valid_after": now + dt.timedelta(days=1),
    }
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "diversefl test CA")])
    ca = (
        x509.CertificateBuilder(**valid)
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP384R1())
    cert = (
        x509.CertificateBuilder(**valid)
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ip)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    (directory / "ca.crt").write_bytes(ca.public_bytes(pem))
    (directory / "server.pem").write_bytes(cert.public_bytes(pem))
    (directory / "server.key").write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return TlsFiles.parse(str(directory))


RUN_CONFIG: dict[str, Any] = {
    "name": "flower-tls",
    "seed": 0,
    "rounds": 1,
    "data": {"dataset": "digits", "partition": "iid"},
    "model": {"name": "softmax"},
    "clients": {"n": 2, "batch": 0.5, "sample": 0.1},
    "optim": {"lr": 0.5, "schedule": "constant", "weight_decay": 0.0},
    "attack": {"name": "none"},
    "aggregator": {"name": "diversefl"},
    "eval": {"every": 1},
}


def test_tls_files_parse(tmp_path):
    for name in ("ca.crt", "server.pem", "server.key"):
        (tmp_path / name).write_text("x")
    tls = TlsFiles.parse(str(tmp_path))
    assert (tls.ca.name, tls.cert.name, tls.key.name) == ("ca.crt", "server.pem", "server.key")
    explicit = TlsFiles.parse(f"{tmp_path}/ca.crt,{tmp_path}/server.pem,{tmp_path}/server.key")
    assert explicit == tls
    with pytest.raises(ValueError, match="not found"):
        TlsFiles.parse(f"{tmp_path}/ca.crt,{tmp_path}/nope.pem,{tmp_path}/server.key")
    with pytest.raises(ValueError, match="node_auth needs tls"):
        LocalFederation(tmp_path / "w", node_auth=True)


def test_deploy_cli_tls_flags(tmp_path, capsys):
    from diversefl.flower.deploy import main

    with pytest.raises(SystemExit) as exc:
        main(["cfg.toml", "--nodes", "2", "--node-auth"])
    assert exc.value.code == 2 and "--node-auth needs --certificates" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["cfg.toml", "--nodes", "2", "--certificates", str(tmp_path / "none")])
    assert exc.value.code == 2 and "certificate files not found" in capsys.readouterr().err


def _check_tls_endpoint(fed: LocalFederation) -> None:
    """The SuperLink port speaks HTTPS only, with a certificate the test CA vouches for."""
    import httpx

    base = f"127.0.0.1:{fed.port}"
    assert httpx.get(f"https://{base}/health", verify=fed.tls.context(), timeout=10).is_success
    with pytest.raises(httpx.HTTPError):  # plain HTTP is not served
        httpx.get(f"http://{base}/health", timeout=10)
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"https://{base}/health", timeout=10)  # the system CAs do not know it


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_tls_localhost_deployment_completes(tmp_path):
    from diversefl.flower.deploy import deploy_local

    tls = make_certificates(tmp_path / "certs")
    config = tmp_path / "tls.toml"
    config.write_text(tomli_w.dumps(RUN_CONFIG))
    work = tmp_path / "work"
    checked: list[bool] = []

    def check(fed: LocalFederation, run_id: int) -> None:
        _check_tls_endpoint(fed)
        checked.append(True)

    try:
        res = deploy_local(
            config, 2, tmp_path / "out", workdir=work, timeout=300, tls=tls, on_started=check
        )
    finally:
        assert _leftovers(work) == [], "processes survived the deployment"
    assert checked and res.ok, res.status
    assert len(res.summary["flower"]["node_ids"]) == 2
    assert res.summary["final_test_accuracy"] > 0.3
    logs = res.logs
    assert "Uvicorn running on https://127.0.0.1" in (logs / "superlink.log").read_text()
    for name in ("superlink.log", "supernode-0.log", "supernode-1.log"):
        assert "--insecure" not in (logs / name).read_text(), name
    conn = (work / "flwr-home" / "config.toml").read_text()
    assert "root-certificates" in conn and "insecure" not in conn


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_supernode_auth_admits_registered_keys_only(tmp_path):
    from diversefl.flower.deploy import make_node_key

    tls = make_certificates(tmp_path / "certs")
    work = tmp_path / "work"
    try:
        with LocalFederation(work, tls=tls, node_auth=True) as fed:
            fed.start_superlink()
            (key,) = fed.node_keys(1)  # registered with `flwr supernode register`
            unregistered, _ = make_node_key(tmp_path / "intruder")
            node = {"partition-id": 0, "num-partitions": 2}
            fed.start_supernodes([node], keys=[key])  # waits until it logs its node id
            fed.start_supernodes([node, node], keys=[unregistered, None], first=1, wait=False)
            refused = [p for p in fed.procs if fed.names[p.pid] != "superlink"][-2:]
            deadline = time.monotonic() + 120
            while any(p.poll() is None for p in refused) and time.monotonic() < deadline:
                time.sleep(0.5)
            assert [p.poll() for p in refused] == [1, 1], "refused nodes did not exit"
            nodes = json.loads(fed.flwr("supernode", "list", "local", "--format", "json"))
            fed.check_alive()  # the registered node still runs
    finally:
        assert _leftovers(work) == [], "processes survived"
    listed = [(n["node-id"], n["status"]) for n in nodes["nodes"]]
    logs = work / "logs"
    node_id = (logs / "supernode-0.log").read_text().split("SuperNode ID: ")[1].split()[0]
    assert listed == [(node_id, "online")]
    intruder = (logs / "supernode-1.log").read_text()
    assert "SuperNode ID" not in intruder and "Failed to activate SuperNode" in intruder
    keyless = (logs / "supernode-2.log").read_text()
    assert "SuperNode ID" not in keyless
    assert "All SuperNodes must be registered via the CLI" in keyless
    assert "No SuperNode found with the given public key" in (logs / "superlink.log").read_text()


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_tls_and_node_auth_deployment_completes(tmp_path):
    from diversefl.flower.deploy import deploy_local

    tls = make_certificates(tmp_path / "certs")
    config = tmp_path / "auth.toml"
    config.write_text(tomli_w.dumps(RUN_CONFIG))
    work = tmp_path / "work"
    try:
        res = deploy_local(
            config, 2, tmp_path / "out", workdir=work, timeout=300, tls=tls, node_auth=True
        )
    finally:
        assert _leftovers(work) == [], "processes survived the deployment"
    assert res.ok, res.status
    superlink = (res.logs / "superlink.log").read_text()
    assert superlink.count("[ControlServicer.RegisterNode] Created node_id=") == 2
    assert "SuperNode authentication is disabled" not in superlink
    registered = sorted(
        line.split("node_id=")[1].strip()
        for line in superlink.splitlines()
        if "RegisterNode] Created node_id=" in line
    )
    assert sorted(res.summary["flower"]["node_ids"]) == registered
