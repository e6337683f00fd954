"""The registration authority: accounts, orders, authorizations, issuance, revocation.

It decides (with `server.policy`), asks the VA and the CA, and records results in the
store. It never speaks HTTP: the web front end (`server.api`) calls it and renders what
it returns.
"""
