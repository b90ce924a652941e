"""The slim image, built here by scripts/image, runs as Shoal's pods run it (read-only root,
UID 1000, no capabilities, no privilege escalation): it serves examples/adder over V1 and V2,
the gateway in it routes to that replica, and the operator in it reconciles a ModelService on
the local control plane."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from e2e.cluster import Cluster
from shoal.operator.settings import DEFAULT_IMAGE, OperatorSettings
from tests.install import podman

pytestmark = pytest.mark.timeout(1800)


@pytest.fixture(scope="module")
def image() -> str:
    ref = podman.build("slim")
    assert ref == DEFAULT_IMAGE  # the operator's default runtime image is this one
    return ref


@pytest.fixture(scope="module")
def replica(image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("replica")
    args = ["serve", "adder=examples.adder:Adder", "--host", "127.0.0.1", "--port", "0"]
    with podman.container(image, tmp, *args, "--port-file", "/tmp/port") as c:
        url = f"http://127.0.0.1:{c.wait_port()}"
        c.wait_ready(f"{url}/v2/health/ready")
        yield url


def test_runs_as_the_operators_uid_on_a_read_only_root_without_build_tools(image: str) -> None:
    probe = (
        "import os, shutil\n"
        "print(os.getuid(), os.getgid())\n"
        "try:\n    open('/app/x', 'w')\nexcept OSError as e:\n    print('ro', e.errno)\n"
        "print([t for t in ('pip', 'pip3', 'gcc', 'cc', 'make') if shutil.which(t)])\n"
    )
    out = podman.run(image, "-c", probe, entrypoint="python3")
    assert out.returncode == 0, out.stderr
    uid, ro, tools = out.stdout.splitlines()
    assert uid == f"{OperatorSettings().run_as_user} {OperatorSettings().run_as_user}"
    assert ro == "ro 30"  # EROFS
    assert tools == "[]"
    # No pip caches, wheels or build trees anywhere in the image.
    find = ["/", "-xdev", "(", "-path", "*/.cache/pip", "-o", "-name", "*.whl", "-o", "-path",
            "/src", ")", "-print"]  # fmt: skip
    leftovers = podman.run(image, *find, entrypoint="find", inspect_as_root=True)
    assert leftovers.stdout == ""


def test_entrypoint_is_the_shoal_command(image: str) -> None:
    out = podman.run(image, "--help")
    assert out.returncode == 0, out.stderr
    for sub in ("serve", "gateway", "operator"):
        assert sub in out.stdout


def test_serves_the_adder_over_v1_and_v2(replica: str) -> None:
    r = httpx.post(f"{replica}/v1/models/adder:predict", json={"instances": [1, 2, 3]}, timeout=30)
    assert r.json() == {"predictions": [2, 3, 4]}
    body = {"inputs": [{"name": "n", "shape": [3], "datatype": "INT32", "data": [10, 20, 30]}]}
    r = httpx.post(f"{replica}/v2/models/adder/infer", json=body, timeout=30)
    out = r.json()["outputs"][0]
    assert (out["shape"], out["data"]) == ([3], [11, 21, 31])


def test_the_gateway_in_the_image_routes_to_the_replica(
    image: str, replica: str, tmp_path: Path
) -> None:
    args = ["gateway", "--host", "127.0.0.1", "--port", "0", "--port-file", "/tmp/port"]
    with podman.container(image, tmp_path, *args, "--upstream", f"adder={replica}") as gw:
        url = f"http://127.0.0.1:{gw.wait_port()}"
        gw.wait_ready(f"{url}/v2/health/live")
        r = httpx.post(f"{url}/v1/models/adder:predict", json={"instances": [41]}, timeout=30)
        assert r.json() == {"predictions": [42]}


@pytest.mark.e2e
def test_the_operator_in_the_image_reconciles_a_model_service(
    image: str, k8s_cluster: Cluster, k8s_namespace: str, tmp_path: Path
) -> None:
    crds = podman.ROOT / "helm" / "shoal" / "crds"
    k8s_cluster.kubectl("apply", "--server-side", "-f", str(crds))
    # The container's user reads a kubeconfig with the credentials inline.
    kubeconfig = tmp_path / "kubeconfig"
    raw = k8s_cluster.kubectl("config", "view", "--raw", "--flatten").stdout
    kubeconfig.write_text(raw)
    kubeconfig.chmod(0o644)
    args = ["operator", "--standalone", "-n", k8s_namespace, "--liveness", ""]
    env = {"KUBECONFIG": "/tmp/kubeconfig"}
    with podman.container(image, tmp_path, *args, env=env) as op:
        manifest = (podman.ROOT / "examples" / "adder.yaml").read_text()
        k8s_cluster.apply(k8s_namespace, manifest)

        def deployment() -> dict[str, object] | None:
            if not op.running():
                raise AssertionError(f"operator container exited:\n{op.logs()}")
            out = k8s_cluster.kubectl(
                "get", "deploy", "adder", "-n", k8s_namespace, "-o", "json", check=False
            )
            return json.loads(out.stdout) if out.returncode == 0 else None

        made = k8s_cluster.wait_for(deployment, 120, "the operator's Deployment for adder")
        assert made is not None
        container = made["spec"]["template"]["spec"]["containers"][0]  # type: ignore[index]
        assert container["image"] == DEFAULT_IMAGE


def test_a_users_image_from_the_example_dockerfile_serves_its_own_code(
    image: str, tmp_path: Path
) -> None:
    tag = "localhost/shoal-test-mymodels:latest"
    build = subprocess.run(
        [*podman.PODMAN, "build", *podman.LIMITS, "--build-arg", f"SHOAL_IMAGE={image}",
         "-f", str(podman.ROOT / "examples" / "Dockerfile"), "-t", tag, str(podman.ROOT)],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr[-3000:]
    args = ["serve", "mymodels.adder:Adder", "--host", "127.0.0.1", "--port", "0"]
    with podman.container(tag, tmp_path, *args, "--port-file", "/tmp/port") as c:
        url = f"http://127.0.0.1:{c.wait_port()}"
        c.wait_ready(f"{url}/v2/health/ready")
        r = httpx.post(f"{url}/v1/models/adder:predict", json={"instances": [1]}, timeout=30)
        assert r.json() == {"predictions": [2]}


def test_code_mounted_at_app_code_runs_without_a_new_image(image: str, tmp_path: Path) -> None:
    """What a ConfigMap volume at /app/code gives a small model: its module on PYTHONPATH."""
    code = tmp_path / "code"
    code.mkdir()
    (code / "tinymodel.py").write_text(
        "class Doubler:\n    def __call__(self, row: int) -> int:\n        return 2 * row\n"
    )
    code.chmod(0o755)
    args = ["serve", "tinymodel:Doubler", "--host", "127.0.0.1", "--port", "0"]
    tmp = tmp_path / "tmp"
    with podman.container(
        image, tmp, *args, "--port-file", "/tmp/port", volumes={code: "/app/code"}
    ) as c:
        url = f"http://127.0.0.1:{c.wait_port()}"
        c.wait_ready(f"{url}/v2/health/ready")
        r = httpx.post(f"{url}/v1/models/doubler:predict", json={"instances": [21]}, timeout=30)
        assert r.json() == {"predictions": [42]}
