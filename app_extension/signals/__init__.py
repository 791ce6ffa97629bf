"""HyperSpy signal classes of app_extension (registered in hyperspy_extension.yaml)."""
