"""engine/generation."""
