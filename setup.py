"""Packaging for gaspar_tw. The twistd plugin ships in twisted/plugins (no __init__.py there)."""

from setuptools import setup

setup(
    packages=["gaspar_tw", "twisted.plugins"],
    package_data={"twisted.plugins": ["gaspar_plugin.py"]},
    exclude_package_data={"twisted.plugins": ["dropin.cache"]},
)
