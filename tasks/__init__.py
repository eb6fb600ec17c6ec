"""Thin Prefect task wrappers around the library's pipeline stages."""
