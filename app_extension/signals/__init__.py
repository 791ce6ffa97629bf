"""HyperSpy signal classes of app_extension (registered in hyperspy_extension.yaml)."""

from .ptychography import AppPtychography2D, LazyAppPtychography2D

__all__ = ["AppPtychography2D", "LazyAppPtychography2D"]
