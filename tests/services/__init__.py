"""Real services for the tests (SPEC.md section 4), started on demand once per session and stopped at its end."""
