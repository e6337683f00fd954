"""Helpers for scripts/bench-enroll: server launchers (Pebble, nodetrust), a shared http-01
responder and a lean ACME load generator that is the same for every target."""
