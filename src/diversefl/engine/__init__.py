"""The simulation engine: flat parameters, batched per-client gradients, the round loop."""
