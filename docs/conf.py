"""Sphinx configuration for the Flask-Partition documentation.

Build with ``sphinx-build -W -b html docs docs/_build/html``. No extension
here needs the network: there is no intersphinx, so the build works offline.
"""

from __future__ import annotations

import importlib.metadata
import os
import sys

# Import the package from this checkout even when it is not installed.
sys.path.insert(0, os.path.abspath(".."))

# -- Project -----------------------------------------------------------------

project = "Flask-Partition"
copyright = "Flask-Partition developers"
author = "Flask-Partition developers"

try:
    release = importlib.metadata.version("Flask-Partition")
except importlib.metadata.PackageNotFoundError:
    import flask_partition

    release = flask_partition.__version__
version = ".".join(release.split(".")[:2])

# -- General -----------------------------------------------------------------

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.viewcode",
]

exclude_patterns = ["_build"]
nitpicky = False

autodoc_typehints = "description"
# Only parameters the docstrings describe get a type, so the exceptions do not
# list SQLAlchemy's ``*arg, **kw`` and get_bind does not list its private
# ``_sa_*`` arguments.
autodoc_typehints_description_target = "documented_params"
autodoc_member_order = "bysource"
autodoc_preserve_defaults = True
autoclass_content = "class"

# -- HTML --------------------------------------------------------------------

try:
    import pallets_sphinx_themes  # noqa: F401
except ImportError:
    html_theme = "furo"
else:
    extensions.append("pallets_sphinx_themes")
    html_theme = "flask"

html_title = f"Flask-Partition {version}"
html_static_path: list[str] = []
