"""The one thing pyproject.toml cannot say: ship the top-level templates/ folder as wizard.templates."""

from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["wizard*", "llmc*"]) + ["wizard.templates"],
    package_dir={"wizard.templates": "templates"},
)
