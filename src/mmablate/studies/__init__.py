"""One package per study: its losses, training loop and study-specific stages."""
