"""The package list, which pyproject.toml cannot express: every ``hubprune*`` package found
(new subpackages and data-only folders such as ``hubprune/schemas`` included) plus ``templates/``,
installed as ``hubprune.templates`` (see ``package-dir`` in pyproject.toml)."""

from setuptools import find_namespace_packages, setup

setup(
    packages=[
        *find_namespace_packages(include=["hubprune*"], exclude=["*__pycache__*"]),
        "hubprune.templates",
        "hubprune.templates.remote",
    ]
)
