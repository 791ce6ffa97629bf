"""app_extension: adaptive-propagator multislice electron ptychography (APP)."""

__version__ = "0.1.0"
