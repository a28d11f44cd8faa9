"""regions package."""
