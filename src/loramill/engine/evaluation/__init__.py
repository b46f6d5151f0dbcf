"""engine/evaluation."""
