"""Every ACME resource URL is built here, and nowhere else."""
from __future__ import annotations

PREFIX = "/acme"


class Links:
    def __init__(self, base_url: str) -> None:
        self.base = base_url.rstrip("/")
        self.root = self.base + PREFIX

    def directory(self) -> str:
        return f"{self.root}/directory"

    def new_nonce(self) -> str:
        return f"{self.root}/new-nonce"

    def new_account(self) -> str:
        return f"{self.root}/new-account"

    def new_order(self) -> str:
        return f"{self.root}/new-order"

    def revoke_cert(self) -> str:
        return f"{self.root}/revoke-cert"

    def key_change(self) -> str:
        return f"{self.root}/key-change"

    def renewal_info(self, cert_id: str = "") -> str:
        return f"{self.root}/renewal-info" + (f"/{cert_id}" if cert_id else "")

    def account(self, account_id: str) -> str:
        return f"{self.root}/acct/{account_id}"

    def orders(self, account_id: str) -> str:
        return f"{self.root}/acct/{account_id}/orders"

    def order(self, order_id: str) -> str:
        return f"{self.root}/order/{order_id}"

    def finalize(self, order_id: str) -> str:
        return f"{self.root}/order/{order_id}/finalize"

    def authz(self, authz_id: str) -> str:
        return f"{self.root}/authz/{authz_id}"

    def challenge(self, challenge_id: str) -> str:
        return f"{self.root}/chall/{challenge_id}"

    def certificate(self, serial: str) -> str:
        return f"{self.root}/cert/{serial}"

    def crl(self) -> str:
        return f"{self.base}/crl/intermediate.crl"

    def account_id_from_url(self, url: str) -> str | None:
        prefix = f"{self.root}/acct/"
        if not url.startswith(prefix):
            return None
        tail = url[len(prefix):]
        return tail if tail and "/" not in tail else None

    def root_certificate(self) -> str:
        return f"{self.root}/root"
