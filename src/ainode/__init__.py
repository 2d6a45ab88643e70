"""Wiring: configuration, the command line and the demo. Nothing imports this package."""
