"""engine/families."""
