"""Sensors: one module per source, each ``read_X(host) -> typed reading``; ``collect`` samples all."""
