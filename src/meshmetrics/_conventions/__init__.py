"""Conventions registries: reading them, and what is generated from them."""
