"""API routes, one module per resource; each is thin: parse, call the gateway, present."""
