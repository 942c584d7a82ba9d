"""Hydra plugins of vigil."""
