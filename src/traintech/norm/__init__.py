"""Normalization layers, their functional forms, and conversion/inference utilities."""

__all__: list[str] = []
