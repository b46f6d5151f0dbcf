"""gateway/web."""
