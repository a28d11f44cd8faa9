"""vilbert package."""
