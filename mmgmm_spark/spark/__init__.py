"""Spark layer: the session builder, Arrow <-> numpy conversion, distributed fit and scoring."""
