"""Packaging for gaspar_tw. The twistd plugins ship in twisted/plugins (no __init__.py there)."""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["gaspar_tw", "gaspar_tw.*"]), "twisted.plugins"],
    package_data={
        "gaspar_tw": ["py.typed"],  # PEP 561: the package's type hints are for type checkers
        "twisted.plugins": ["gaspar_plugin.py", "gaspar_worker_plugin.py"],
    },
    exclude_package_data={"twisted.plugins": ["dropin.cache"]},
)
