"""Pretraining objectives, one module each, registered by name (see registry.py)."""
