"""Real services for the tests (README.md, "Development"), started on demand once per session and stopped at its end."""
