"""The store: typed methods in, models out. The only module that writes SQL.

One SQLite file in WAL mode. Every state change is one transaction, so a crash (kill -9)
at any point leaves each object either before or after the change, never half-written.
With `synchronous=full` (the default) a commit is on disk before the caller answers.
"""
from __future__ import annotations

from server.store.accounts_repo import AccountsRepo
from server.store.auditing_repo import AuditRepo
from server.store.base import StoreBase
from server.store.certificates_repo import CertificatesRepo
from server.store.devices_repo import DevicesRepo
from server.store.orders_repo import OrdersRepo
from server.store.rows import RevocationEvent

__all__ = ["RevocationEvent", "Store"]


class Store(AccountsRepo, OrdersRepo, CertificatesRepo, DevicesRepo, AuditRepo, StoreBase):
    """One object for every query; each concern lives in its own module."""
