"""Prefect flows users run: ``hamnet-optimize`` (the main job)."""
