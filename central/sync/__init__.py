"""Central's side of NATS: streams, consumers, connections."""
