"""Dagster assets of mimo_pipeline: one module per artifact family, each asset thin."""
