"""The dropout family and Monte Carlo dropout."""

__all__: list[str] = []
