"""``make kind-e2e`` as a user runs it: its own cluster, the chart, the samples, then nothing left.

The script builds (or reuses) the images, creates a cluster ``regtask-e2e-<pid>``, installs the
chart, applies ``manifests/samples/`` (a document analysis with an LLM summary, embeddings into
Chroma, an LLM conversation), waits until every sample task Succeeded, reads each through the
shim's RPC, and deletes the cluster and stops its host services.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from regtask_dev import kind

pytestmark = [pytest.mark.kube, pytest.mark.llm, pytest.mark.slow, pytest.mark.timeout(1800)]

REPO = Path(__file__).resolve().parents[2]


def test_make_kind_e2e_passes_and_leaves_no_cluster(cluster: kind.KindCluster) -> None:
    """(``cluster``: the session's own, so the host guard outlives this run as it must.)"""
    done = subprocess.run(
        [str(REPO / "hack" / "kind-e2e.sh")],
        capture_output=True,
        text=True,
        timeout=1700,
        check=False,
        env={**os.environ, "TASK_TIMEOUT_S": "900"},
    )
    assert done.returncode == 0, done.stderr[-6000:]
    assert "kind-e2e: PASSED" in done.stderr
    statuses = [line for line in done.stdout.splitlines() if "TASK.get_task_status" in line]
    assert len(statuses) == 3, done.stdout
    assert all('"status": "completed"' in line for line in statuses), statuses
    [name] = re.findall(r"creating the kind cluster (regtask-e2e-[0-9]+)", done.stderr)
    assert name not in cluster.existing()
    assert not (kind.kind_dir() / "clusters" / f"{name}.json").exists()
