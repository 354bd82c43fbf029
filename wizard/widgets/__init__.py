"""Widgets and renderings shared by the screens."""
