"""Wire protocols: each turns bytes into rows for the data plane and results back into bytes."""
