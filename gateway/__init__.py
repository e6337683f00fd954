"""nodetrust-gateway: an mTLS reverse proxy that checks the node behind every request.

tls (handshake, operational CA only) -> identity (parsed once per connection) -> authz (per
request: validity, revocation, freshness, route policy) -> proxy/upstream (streamed HTTP/1.1,
WebSocket splice, pooled upstream connections). revocation keeps the revoked set current.
"""
