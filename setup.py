"""Packaging glue that pyproject.toml alone cannot express: the top-level ``search_spaces/``
folder ships inside the package as ``merc/search_spaces/*.yaml`` (so ``sweeps/<model>.py`` finds
its spec with a normal, non-editable install), while staying where it is in the repository.
Everything else is configured in pyproject.toml."""
from setuptools import find_namespace_packages, setup

# namespace packages too: merc/data has no __init__.py
setup(packages=find_namespace_packages(include=["merc", "merc.*"], exclude=["*.__pycache__"]) +
      ["merc.search_spaces"],
      package_dir={"merc.search_spaces": "search_spaces"},
      package_data={"merc.search_spaces": ["*.yaml"]})
