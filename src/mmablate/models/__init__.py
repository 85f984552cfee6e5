"""Model construction shared by the studies."""
