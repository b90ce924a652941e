"""The Shoal data plane: model contract, batching, server, protocols, gateway."""
