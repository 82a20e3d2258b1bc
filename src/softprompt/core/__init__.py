"""The backbone's forward pass, shared by every task, the sampler and serving."""
