"""README.md's code blocks run as written: each local bash block in a fresh bash (those with
fixed ports, 8000 and 8081, in their own network namespace, so they clash with nothing else on
the machine), against real `shoal` processes; the Python block is executed. Blocks that need a
Kubernetes cluster are not run here (see `is_cluster`). A block nobody runs must say why."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"^```(\w+)\n(.*?)^```$", re.MULTILINE | re.DOTALL)

# The first line of each block nobody runs here, and why.
NOT_RUN = {
    "scripts/demo": "serves until Ctrl-C, and scripts/test is this suite itself; `shoal demo "
    "--once` runs in tests/runtime/test_runtime_v2_conformance.py",
}
# What each local block must print, by a phrase of its first line.
EXPECTED = {
    "Locally": ['{"predictions":[3,4,5]}'],
    "Several models": ['"class":"setosa"'],
    "MLflow registry": ['{"predictions":[0]}'],
    "Offline": ["3 rows, 0 failed"],
    "gateway": ['{"predictions":[2,3,4]}'],
}


def blocks(language: str) -> list[str]:
    return [
        body for lang, body in BLOCK.findall((ROOT / "README.md").read_text()) if lang == language
    ]


def first_line(block: str) -> str:
    return block.splitlines()[0]


def is_cluster(block: str) -> bool:
    """Needs a Kubernetes cluster, so not run here: the Use section's Kubernetes block (not run
    as a whole by any test yet; the operator reconciling examples.adder is tested in
    tests/operator/test_operator_cluster.py) and the Install section's helm/kubectl steps (which
    tests/scenarios/test_scenario_journey.py follows on the local control plane)."""
    return any(word in block for word in ("e2e.cluster", "kubectl", "helm "))


LOCAL = [b for b in blocks("bash") if not is_cluster(b) and first_line(b).split()[0] not in NOT_RUN]


def uses_fixed_ports(block: str) -> bool:
    return "--port" in block or "localhost:" in block


def run_block(block: str, timeout_s: float) -> subprocess.CompletedProcess[str]:
    """`block` in bash -euo pipefail; one that uses fixed ports in a new network namespace with
    only loopback up (Ray, which needs a routable address, runs in the machine's own)."""
    command = ["bash", "-euo", "pipefail", "-c", block]
    if uses_fixed_ports(block) and not is_cluster(block):  # the cluster makes its own network
        assert shutil.which("unshare"), "util-linux's unshare is needed (scripts/setup-system)"
        command = ["unshare", "--net", *command[:-1], "ip link set lo up\n" + block]
    return subprocess.run(
        command,
        cwd=ROOT,
        env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"},
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def test_every_block_is_run_or_says_why() -> None:
    bash = blocks("bash")
    assert bash, "README.md has no bash blocks"
    for block in bash:
        key = first_line(block).split()[0]
        assert is_cluster(block) or key in NOT_RUN or block in LOCAL
    for block in LOCAL:
        assert any(phrase in first_line(block) for phrase in EXPECTED), first_line(block)


@pytest.mark.timeout(600)  # Ray and MLflow start on two shared cores
@pytest.mark.parametrize("block", LOCAL, ids=[first_line(b)[2:40] for b in LOCAL])
def test_local_block_runs_as_written(block: str) -> None:
    done = run_block(block, timeout_s=540)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    for phrase, expected in EXPECTED.items():
        if phrase in first_line(block):
            for text in expected:
                assert text in output, output[-4000:]


def test_python_block_runs() -> None:
    (code,) = blocks("python")
    namespace: dict[str, object] = {}
    exec(compile(code, "README.md", "exec"), namespace)  # the Adder class, as documented
    adder = namespace["Adder"](increment=2)  # type: ignore[operator]
    assert adder.increment == 2
