"""Simulated devices for the device-attest-01 mode: one manufacturer root, N bootstrap
(IDevID-style) certificates with their own keys and distinct device ids. Minting is setup:
it happens before the timed run and is not measured."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import serialization

from nodetrust.attestation import build_att_obj
from server.demo import issue_bootstrap, make_manufacturer_root

MANUFACTURER = "bench-devices"  # the root's file stem = the manufacturer's name on the server


@dataclass(frozen=True)
class BenchDevice:
    device_id: str
    key: Any  # the bootstrap private key (P-256)
    leaf_der: bytes  # the bootstrap certificate, DER (x5c[0])

    @property
    def node_dns(self) -> str:
        return f"{self.device_id.lower()}.nodes.nodetrust.internal"

    def att_obj(self, key_authorization: str) -> str:
        """What the device sends: base64url CBOR {fmt: step, attStmt: {alg, sig, x5c}}."""
        return build_att_obj(key_authorization, self.key, [self.leaf_der])


@dataclass(frozen=True)
class DeviceFleet:
    root_pem: bytes
    devices: list[BenchDevice]
    mint_seconds: float


def mint_fleet(count: int, prefix: str = "BENCH") -> DeviceFleet:
    t0 = time.monotonic()
    root, root_key = make_manufacturer_root("Bench Devices")
    devices = []
    for i in range(count):
        device_id = f"{prefix}-{i:07d}"
        cert, key = issue_bootstrap(device_id, root, root_key)
        devices.append(BenchDevice(device_id, key, cert.public_bytes(serialization.Encoding.DER)))
    return DeviceFleet(root.public_bytes(serialization.Encoding.PEM), devices,
                       time.monotonic() - t0)
