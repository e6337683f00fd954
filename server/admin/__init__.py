"""The operators' HTTPS listener: admin API, /metrics, dashboard (`[admin] listen`)."""
