"""Packages are found, not listed; conf/ ships inside the wheel as kd_lightning/conf so that kd-train
works from an installed wheel too (tests/test_packaging.py builds one and checks)."""
from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["kd_lightning", "kd_lightning.*"]) + ["kd_lightning.conf"],
    package_dir={"kd_lightning.conf": "conf"},
)
