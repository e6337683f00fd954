"""Node-side files: private keys born 0600, and atomic replacement (temp + rename) so a
reader (a TLS server reloading node.pem) never sees half a file."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write `data` to a temp file in the same folder (same filesystem), fsync, rename."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)  # before any byte is written: a key is never world-readable
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def private_pem(key: Any) -> bytes:
    return bytes(key.private_bytes(serialization.Encoding.PEM,
                                   serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption()))


def write_private_key(path: Path, key: Any) -> None:
    write_atomic(path, private_pem(key), mode=0o600)


def load_private_key(path: Path) -> Any:
    try:
        return serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{path}: not an unencrypted PEM private key ({exc})") from None


def load_or_create_ec_key(path: Path) -> tuple[ec.EllipticCurvePrivateKey, bool]:
    """(key, created): reuse the key at `path`, or make a P-256 key there (0600)."""
    if path.exists():
        key = load_private_key(path)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{path}: expected an EC private key, found {type(key).__name__}")
        return key, False
    key = ec.generate_private_key(ec.SECP256R1())
    write_private_key(path, key)
    return key, True
