"""nodetrust client side: the device-attest-01 wire types, the certbot plugin and the
`nodetrust enroll` node client. Shared by the server, the plugin and the tests."""
