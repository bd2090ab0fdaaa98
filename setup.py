"""Packaging for gaspar_tw. The twistd plugin ships in twisted/plugins (no __init__.py there)."""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["gaspar_tw", "gaspar_tw.*"]), "twisted.plugins"],
    package_data={"twisted.plugins": ["gaspar_plugin.py"]},
    exclude_package_data={"twisted.plugins": ["dropin.cache"]},
)
