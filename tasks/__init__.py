"""Task modules (one per objective or fine-tuning task), registered by name; see docs/ARCHITECTURE.md."""
