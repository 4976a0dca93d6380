"""Training layer: the shared trainer, start-up steps and run configs (docs/ARCHITECTURE.md)."""
