"""Test support: the backends, a running stack, a token forge and a raw broker client."""
