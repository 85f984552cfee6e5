"""mmablate: reproducible ablation studies of multimodal-alignment papers."""
__version__ = "0.1.0"
