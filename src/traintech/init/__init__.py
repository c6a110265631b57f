"""Weight initialization: torch-compatible inits, whole-model policies, LSUV, diagnostics."""

__all__: list[str] = []
