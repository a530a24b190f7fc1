"""Typed settings loaded from TOML."""
