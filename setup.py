"""Package layout: the stage folders at the repository root are sub-packages of edgekit.

``prune/`` -> ``edgekit.prune``, ``quant/`` -> ``edgekit.quant``, ``exporters/`` -> ``edgekit.exporters``,
``devices/`` -> ``edgekit.devices`` and ``recipes/`` (YAML only) -> ``edgekit.recipes``.
"""

from setuptools import find_packages, setup

STAGE_FOLDERS = ("prune", "quant", "exporters", "devices", "recipes")

packages = find_packages(include=["edgekit", "edgekit.*"])
package_dir = {"edgekit": "edgekit"}
for folder in STAGE_FOLDERS:
    package_dir[f"edgekit.{folder}"] = folder
    packages.append(f"edgekit.{folder}")
    packages += [f"edgekit.{folder}.{sub}" for sub in find_packages(folder)]

setup(packages=packages, package_dir=package_dir)
