"""Jinja templates of llmc-wizard: model declarations and llmc configs (package data only)."""
