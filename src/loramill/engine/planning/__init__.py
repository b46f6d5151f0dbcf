"""Planning a run before it starts: what it will need, measured from the real architectures."""
