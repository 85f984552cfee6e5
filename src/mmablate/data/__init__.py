"""Dataset loaders for the real on-disk formats (shared by the world and the paper scale)."""
