"""Central's domain services: one unit of work per call, no HTTP in here."""
