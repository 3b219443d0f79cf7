"""Ray's workers must run the driver's code.

Ray puts the driver's working directory (and its script's folder) first on its workers' import path
(`py_driver_sys_path` in ray/_private/worker.py), ahead of what is installed. A driver started inside a checkout
other than the installed uvlm therefore imports one version while its trials import the other: measured, a sweep
whose driver pretrained recipe 3's LM had trials load recipe 2's from the cache, with nothing to show it.
After Ray starts, one task compares the source its worker imports with the driver's, by content.
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

from trainables.errors import UserError

PACKAGES = ("trainables", "search", "analysis")
"""What a trial imports; their .py files are compared, not their paths (two checkouts of one commit agree)."""

WORKER_TIMEOUT_S = 120


def package_roots() -> list[Path]:
    return [Path(importlib.util.find_spec(name).submodule_search_locations[0]) for name in PACKAGES]


def fingerprint() -> tuple[str, str]:
    """(digest of the packages' source, the folder they are imported from) in this process."""
    digest = hashlib.sha256()
    roots = package_roots()
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            digest.update(f"{root.name}/{path.relative_to(root).as_posix()}\0".encode())
            digest.update(path.read_bytes())
    return digest.hexdigest(), str(roots[0].parent)


def check_workers() -> None:
    """Raise a UserError unless a Ray worker imports the same uvlm source as this driver."""
    import ray

    digest, where = fingerprint()
    try:
        worker_digest, worker_where = ray.get(ray.remote(num_cpus=0)(fingerprint).remote(), timeout=WORKER_TIMEOUT_S)
    except ray.exceptions.GetTimeoutError:
        raise UserError(f"no Ray worker started within {WORKER_TIMEOUT_S} s to check its code") from None
    except ray.exceptions.RayError as error:
        raise UserError(f"Ray's workers cannot import uvlm ({type(error).__name__}): install it where they run "
                        "(pip install -e . in the same checkout)") from None
    if worker_digest != digest:
        raise UserError(f"Ray's workers import uvlm from {worker_where} but this driver from {where}, and the two "
                        "differ: run uvlm from outside that folder, or install it (pip install -e . there)")
