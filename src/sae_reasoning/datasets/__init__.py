"""Kedro datasets of this project: each wraps a plain library module for the catalog."""
