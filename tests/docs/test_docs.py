"""Every snippet in docs/ runs as written: the Python blocks that start with `# name.py` are
written as those files, each shell block's `shoal serve` starts a real server on loopback (in
place of localhost:8000), each `curl` must answer what the `# ...` line under it says, each
`shoal batch-predict` and `python` line must succeed, and each ModelService YAML must parse."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from shoal.operator.spec import parse_spec
from shoal.runtime.testing import ServeProcess, shoal_command

ROOT = Path(__file__).resolve().parents[2]
DOCS = sorted((ROOT / "docs").glob("*.md"))
FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.M | re.S)


@dataclass(frozen=True)
class Block:
    page: Path
    lang: str
    text: str

    @property
    def id(self) -> str:
        return f"{self.page.stem}:{self.text.splitlines()[0][:60]}"


def blocks(page: Path) -> list[Block]:
    return [Block(page, lang, text) for lang, text in FENCE.findall(page.read_text())]


def files(page: Path) -> dict[str, str]:
    """The page's Python files: blocks whose first line is `# name.py`."""
    out: dict[str, str] = {}
    for b in blocks(page):
        first = b.text.splitlines()[0]
        if b.lang == "python" and re.fullmatch(r"# [\w/]+\.py", first):
            out[first[2:]] = b.text
    return out


SHELL = [b for page in DOCS for b in blocks(page) if b.lang == "bash"]
YAML = [b for page in DOCS for b in blocks(page) if b.lang == "yaml"]


def test_the_docs_have_snippets() -> None:
    pages = {b.page.name for b in SHELL}
    assert {"coming-from-ray-serve.md", "batch-predict.md"} <= pages


@pytest.mark.parametrize("block", YAML, ids=[b.id for b in YAML])
def test_model_service_yaml_is_a_valid_spec(block: Block) -> None:
    doc = yaml.safe_load(block.text)
    assert doc["kind"] == "ModelService"
    parse_spec(doc["spec"])


def _curl(client: httpx.Client, url: str, line: str) -> httpx.Response:
    args = shlex.split(line)[1:]
    target = next(a for a in args if a.startswith("localhost:8000"))
    path = target[len("localhost:8000") :]
    if "-d" in args:
        body = args[args.index("-d") + 1]
        return client.post(url + path, content=body, headers={"content-type": "application/json"})
    return client.get(url + path)


def _expect(response: httpx.Response, comment: str, line: str) -> None:
    want = comment[2:].strip()
    status = re.fullmatch(r"HTTP (\d{3})", want)
    if status:
        assert response.status_code == int(status.group(1)), (line, response.text)
        return
    assert response.status_code == 200, (line, response.text)
    assert response.json() == json.loads(want), line


def _run(cwd: Path, line: str, comment: str | None) -> None:
    args = shlex.split(line)
    cmd = [sys.executable, *args[1:]] if args[0] == "python" else [*shoal_command(), *args[1:]]
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=500, check=False)
    assert done.returncode == 0, (line, done.stderr[-3000:])
    if comment is not None:
        assert comment[2:].strip() in done.stderr, (line, done.stderr[-3000:])


@pytest.mark.timeout(600)  # a batch-predict block starts Ray, on two shared cores
@pytest.mark.parametrize("block", SHELL, ids=[b.id for b in SHELL])
def test_shell_block_runs_as_written(block: Block, tmp_path: Path) -> None:
    for name, text in files(block.page).items():
        (tmp_path / name).write_text(text)
    lines = [ln for ln in block.text.splitlines() if ln.strip()]
    server: ServeProcess | None = None
    try:
        with httpx.Client(timeout=60) as client:
            for i, line in enumerate(lines):
                if line.startswith("#"):
                    continue
                comment = lines[i + 1] if i + 1 < len(lines) and lines[i + 1][0] == "#" else None
                if line.startswith("shoal serve "):
                    assert server is None, "one server per block"
                    server = ServeProcess(*shlex.split(line)[2:], cwd=tmp_path).start()
                elif line.startswith("curl "):
                    assert server is not None, f"{line}: no server started in this block"
                    assert comment is not None, f"{line}: no expected answer under it"
                    _expect(_curl(client, server.url, line), comment, line)
                elif line.startswith(("shoal ", "python ")):
                    _run(tmp_path, line, comment)
                else:
                    raise AssertionError(f"the doc test does not know how to run {line!r}")
    finally:
        if server is not None:
            server.close()
