"""Central's HTTP API: thin Litestar controllers over the services."""
