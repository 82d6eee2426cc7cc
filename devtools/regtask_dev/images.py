"""The project's images, for a cluster here: built by ``hack/kind/images.sh`` (buildah, from the
Dockerfile, cached by a hash of their inputs), or by Docker where a Docker engine answers.

One image per Dockerfile target: ``operator``, ``shim`` (the RPC shim and the gateway) and
``runner`` (every task Job).
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence

from regtask_dev.kind import HACK_KIND, provider

TARGETS = ("operator", "shim", "runner")


class ImageBuildError(RuntimeError):
    """An image could not be built."""


def build(targets: Sequence[str] = TARGETS, *, timeout_s: float = 3600) -> dict[str, str]:
    """Build what is missing; ``{target: image reference}``."""
    unknown = set(targets) - set(TARGETS)
    if unknown:
        raise ImageBuildError(f"unknown image targets {sorted(unknown)}: {', '.join(TARGETS)}")
    argv = [str(HACK_KIND / "images.sh"), *targets]
    if provider() == "docker":
        argv.insert(1, "--docker")
    result = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=timeout_s)
    if result.returncode != 0:
        raise ImageBuildError(
            f"building images {', '.join(targets)} failed:\n{result.stderr.strip()[-3000:]}"
        )
    refs = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line.strip())
    missing = set(targets) - refs.keys()
    if missing:
        raise ImageBuildError(f"hack/kind/images.sh named no image for {sorted(missing)}")
    return {target: refs[target] for target in targets}
