"""Evaluation layer: retrieval scoring engine, metrics and results tables (docs/ARCHITECTURE.md)."""
