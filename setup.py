"""Package layout: the stage folders at the repository root are sub-packages of edgekit.

``prune/`` -> ``edgekit.prune``, ``quant/`` -> ``edgekit.quant``, ``exporters/`` -> ``edgekit.exporters``,
``devices/`` -> ``edgekit.devices`` and ``recipes/`` (YAML only) -> ``edgekit.recipes``.
``edgekit/models/checkpoints`` holds only the zoo's weight files: it is listed as a data package (its files
come from ``package-data`` in pyproject.toml) so that setuptools does not guess at it.
"""

import warnings

from setuptools import find_packages, setup

STAGE_FOLDERS = ("prune", "quant", "exporters", "devices", "recipes")
DATA_PACKAGES = ("edgekit.models.checkpoints",)

packages = find_packages(include=["edgekit", "edgekit.*"]) + list(DATA_PACKAGES)
package_dir = {"edgekit": "edgekit"}
for folder in STAGE_FOLDERS:
    package_dir[f"edgekit.{folder}"] = folder
    packages.append(f"edgekit.{folder}")
    packages += [f"edgekit.{folder}.{sub}" for sub in find_packages(folder)]

# An editable install of a package-dir mapping (prune/ -> edgekit.prune) goes through setuptools' meta path
# finder, which always prints an informational notice ("be careful with folders named like your package").
# It is not a problem with this project (no top-level edgekit/ other than the package itself), so it is
# silenced here; every other setuptools warning still shows.
try:
    from setuptools.warnings import InformationOnly

    warnings.filterwarnings("ignore", message=r"\s*Editable installation\.", category=InformationOnly)
except ImportError:  # older setuptools: no such notice
    pass

setup(packages=packages, package_dir=package_dir)
