"""Loaded by every Python process the tests start (notebook kernels included): no network."""
import os

if os.environ.get("FINETUNE_HELPERS_NO_NETWORK") == "1":
    from finetune_helpers import netguard

    netguard.install()
