"""UC2 library package (no work at import time)."""

