"""Metrics shared by the studies; each is what its name says (world metrics are labelled so)."""
