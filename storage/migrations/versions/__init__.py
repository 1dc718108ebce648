"""Alembic revisions, one file each, oldest first (``0001_baseline.py``). A package so they are installed."""
