"""The image (containers/Dockerfile), without a Docker engine.

The Dockerfile is parsed into its instructions and checked against the repository and the build
context that .dockerignore leaves: every COPY source exists and reaches the build, dependencies are a
layer of their own, the user is not root, DAGSTER_HOME holds the shipped dagster.yaml. Then the image's
entrypoint (containers/entrypoint.sh) is run here for its three roles, from the repository as the
image lays it out: the code server answers over gRPC, the webserver and the daemon load it through
deploy/workspace.yaml. The image's build step that makes the dbt manifest is run too (into a
temporary target directory).
"""

from __future__ import annotations

import fnmatch
import importlib.util
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pytest

from engagement_dagster.core.settings import PROJECT_ROOT

DOCKERFILE = PROJECT_ROOT / "containers" / "Dockerfile"
ENTRYPOINT = PROJECT_ROOT / "containers" / "entrypoint.sh"
DOCKERIGNORE = PROJECT_ROOT / ".dockerignore"
BIN = Path(sys.executable).parent


# --- a small Dockerfile parser -----------------------------------------------------------------------

@dataclass
class Instruction:
    keyword: str
    flags: dict[str, str]
    args: list[str]  # JSON (exec) form, or shell words
    raw: str


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions in order: comments dropped, continuation lines joined, --flags split off."""
    instructions, pending = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        logical, pending = pending + stripped, ""
        keyword, _, rest = logical.partition(" ")
        rest = rest.strip()
        flags = {}
        while rest.startswith("--"):
            flag, _, rest = rest.partition(" ")
            name, _, value = flag[2:].partition("=")
            flags[name] = value
            rest = rest.strip()
        if rest.startswith("["):
            args = json.loads(rest)
        elif keyword.upper() in {"RUN", "CMD", "ENTRYPOINT"}:
            args = [rest]
        else:
            args = shlex.split(rest)
        instructions.append(Instruction(keyword.upper(), flags, args, rest))
    assert not pending, "the Dockerfile ends inside a continued line"
    return instructions


def _env(instruction: Instruction) -> dict[str, str]:
    return dict(arg.split("=", 1) for arg in instruction.args)


@pytest.fixture(scope="module")
def dockerfile() -> list[Instruction]:
    return parse_dockerfile(DOCKERFILE.read_text())


def _ignore_patterns() -> list[str]:
    return [line.strip() for line in DOCKERIGNORE.read_text().splitlines()
            if line.strip() and not line.strip().startswith("#")]


def ignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule: a path is out when the last pattern matching it or one of its
    parent folders is not a `!` exception. Patterns are relative to the context root; `**` spans folders."""
    parts = PurePosixPath(path).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    verdict = False
    for line in patterns:
        negate = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        variants = {pattern, pattern.replace("**/", "")} if "**/" in pattern else {pattern}
        if any(fnmatch.fnmatchcase(prefix, variant) for prefix in prefixes for variant in variants):
            verdict = not negate
    return verdict


def _copies(dockerfile: list[Instruction]) -> list[Instruction]:
    return [i for i in dockerfile if i.keyword in {"COPY", "ADD"} and "from" not in i.flags]


def _workdir_before(dockerfile: list[Instruction], instruction: Instruction) -> PurePosixPath:
    workdir = PurePosixPath("/")
    for item in dockerfile:
        if item is instruction:
            break
        if item.keyword == "WORKDIR":
            workdir = workdir / item.args[0]
    return workdir


def _image_files(dockerfile: list[Instruction]) -> dict[PurePosixPath, Path]:
    """Where each copied repository file lands in the image (absolute path → repository path)."""
    files: dict[PurePosixPath, Path] = {}
    for copy in _copies(dockerfile):
        *sources, dest = copy.args
        base = _workdir_before(dockerfile, copy) / dest
        for source in sources:
            local = PROJECT_ROOT / source
            target = base / Path(source).name if dest.endswith("/") or len(sources) > 1 else base
            if local.is_dir():
                for path in local.rglob("*"):
                    if path.is_file():
                        files[target / path.relative_to(local).as_posix()] = path
            else:
                files[target] = local
    return files


# --- the Dockerfile ----------------------------------------------------------------------------------

def test_base_image_is_an_exact_python_3_11_slim_release(dockerfile):
    (base,) = [i for i in dockerfile if i.keyword == "FROM"]
    image = base.args[0]
    assert re.fullmatch(r"python:3\.11\.\d+-slim(-[a-z]+)?(@sha256:[0-9a-f]{64})?", image), image


def test_dependencies_are_a_layer_below_the_project(dockerfile):
    copies = _copies(dockerfile)
    first = copies[0]
    assert first.args[:-1] == ["pyproject.toml"], "the first layer must depend on pyproject.toml alone"
    install_deps = next(i for i in dockerfile if i.keyword == "RUN" and "pip install" in i.raw)
    assert dockerfile.index(first) < dockerfile.index(install_deps) < dockerfile.index(copies[1])
    assert "-r " in install_deps.raw and "--no-deps" not in install_deps.raw
    project = next(i for i in dockerfile if i.keyword == "RUN" and "pip install" in i.raw and "-e ." in i.raw)
    assert "--no-deps" in project.raw  # the second layer adds only the project
    assert any("engagement_dagster" in c.args[:-1] for c in copies[1:])


def test_every_copy_source_exists_and_reaches_the_build_context(dockerfile):
    patterns = _ignore_patterns()
    for copy in _copies(dockerfile):
        for source in copy.args[:-1]:
            assert (PROJECT_ROOT / source).exists(), f"COPY {source}: not in the repository"
            assert not ignored(source, patterns), f"COPY {source}: excluded by .dockerignore"


def test_dockerignore_keeps_the_heavy_and_local_folders_out():
    patterns = _ignore_patterns()
    for path in [".venv", ".venv-checkov/bin/python", ".lake", ".lake-bench", ".dagster_home", ".bench-data",
                 "dbt_project/target", "dbt_project/target-bench/manifest.json", "tests", "tests/conftest.py",
                 ".git", "engagement_dagster/__pycache__/x.pyc"]:
        assert ignored(path, patterns), f"{path} would be sent to the Docker build"
    for path in ["pyproject.toml", "engagement_dagster/definitions.py", "dbt_project/models",
                 "deploy/dagster.yaml", "containers/entrypoint.sh"]:
        assert not ignored(path, patterns), path
    # The heavy folders really are heavy here: excluding them is what keeps the context small.
    assert ignored(".venv/lib", patterns)


def test_the_image_runs_as_a_fixed_non_root_user(dockerfile):
    users = [i for i in dockerfile if i.keyword == "USER"]
    assert users, "no USER: the image would run as root"
    user = users[-1].args[0]
    name, _, group = user.partition(":")
    assert name not in {"root", "0"} and group not in {"root", "0"}, user
    assert dockerfile.index(users[-1]) < max(dockerfile.index(i) for i in dockerfile if i.keyword == "ENTRYPOINT")
    if name.isdigit():
        creates = [i.raw for i in dockerfile if i.keyword == "RUN" and "useradd" in i.raw]
        assert any(f"--uid {name}" in raw for raw in creates), f"USER {name} is never created"


def test_dagster_home_holds_the_shipped_instance_config(dockerfile):
    env = {k: v for i in dockerfile if i.keyword == "ENV" for k, v in _env(i).items()}
    assert env["ENGAGEMENT_ENV"] == "aws"
    files = _image_files(dockerfile)
    home = PurePosixPath(env["DAGSTER_HOME"])
    assert files[home / "dagster.yaml"] == PROJECT_ROOT / "deploy" / "dagster.yaml"
    # The image's default port for dagster.yaml's DAGSTER_PG_PORT (no default inside dagster.yaml).
    assert env["DAGSTER_PG_PORT"] == "5432"


def test_the_entrypoint_script_and_everything_it_runs_are_in_the_image(dockerfile):
    (entrypoint,) = [i for i in dockerfile if i.keyword == "ENTRYPOINT"]
    files = _image_files(dockerfile)
    script = files[PurePosixPath(entrypoint.args[0])] if entrypoint.args[0].startswith("/") else None
    if script is None:  # on PATH: find where the COPY put it
        script = next(local for path, local in files.items() if path.name == entrypoint.args[0])
    assert script == ENTRYPOINT
    copy = next(i for i in _copies(dockerfile) if "containers/entrypoint.sh" in i.args)
    assert copy.flags.get("chmod", "").endswith("755") or os.access(ENTRYPOINT, os.X_OK)
    subprocess.run(["sh", "-n", str(ENTRYPOINT)], check=True)
    text = ENTRYPOINT.read_text()
    env = {k: v for i in dockerfile if i.keyword == "ENV" for k, v in _env(i).items()}
    app_dir = PurePosixPath(env["APP_DIR"])
    assert app_dir == _workdir_before(dockerfile, entrypoint)
    for module in re.findall(r"-m\s+([\w.]+)", text):
        assert importlib.util.find_spec(module) is not None, module
        assert app_dir / (module.replace(".", "/") + ".py") in files, f"{module} is not copied into the image"
    workspaces = re.findall(r"-w\s+(\S+)", text)
    assert set(workspaces) == {"deploy/workspace.yaml"}
    assert files[app_dir / "deploy/workspace.yaml"] == PROJECT_ROOT / "deploy" / "workspace.yaml"
    assert re.search(r"dagster code-server start -h 0\.0\.0\.0 -p \"\$\{DAGSTER_CODE_SERVER_PORT:-4000\}\"", text)


def test_the_build_step_makes_the_dbt_manifest_for_the_aws_target(dockerfile, tmp_path):
    (step,) = [i for i in dockerfile if i.keyword == "RUN" and "prepare-and-package" in i.raw]
    command = shlex.split(step.args[0])
    assign = [word for word in command if re.fullmatch(r"[A-Z_]+=.*", word)]
    assert "ENGAGEMENT_ENV=aws" in assign
    argv = [word for word in command if word not in assign]
    assert argv[:3] == ["dagster-dbt", "project", "prepare-and-package"]
    # The image's step, run here into a temporary target directory (the repository's stays as it is).
    env = {**os.environ, **dict(word.split("=", 1) for word in assign), "DBT_TARGET_PATH": str(tmp_path / "target"),
           "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run([str(BIN / argv[0]), *argv[1:]], cwd=PROJECT_ROOT, env=env,
                            capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    manifest = json.loads((tmp_path / "target" / "manifest.json").read_text())
    assert manifest["metadata"]["adapter_type"] == "athena"


# --- the entrypoint's roles, run ----------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start(role: str, env: dict[str, str], log: Path) -> subprocess.Popen:
    with log.open("wb") as out:
        return subprocess.Popen(["sh", str(ENTRYPOINT), role], env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)  # dagster processes may take a while on SIGTERM
    process.wait(timeout=30)


def _wait(what: str, probe, process: subprocess.Popen, log: Path, timeout: float = 180):
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            pytest.fail(f"{what} exited ({process.returncode}):\n{log.read_text()[-4000:]}")
        try:
            result = probe()
            if result:
                return result
        except Exception:  # not up yet
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not answer within {timeout:.0f} s:\n{log.read_text()[-4000:]}")
        time.sleep(0.5)


@pytest.fixture(scope="module")
def roles_env(tmp_path_factory):
    """The environment the image gives its processes, with the repository standing in for APP_DIR.
    DAGSTER_HOME is an empty folder (default SQLite instance): the Postgres/ECS instance is
    tests/test_ecs_launch.py's subject."""
    home = tmp_path_factory.mktemp("dagster_home")
    code_port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DAGSTER_", "ENGAGEMENT_"))}
    env.update({
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "APP_DIR": str(PROJECT_ROOT), "DAGSTER_HOME": str(home),
        "DAGSTER_CURRENT_IMAGE": "engagement-dagster:test", "DAGSTER_CODE_SERVER_HOST": "127.0.0.1",
        "DAGSTER_CODE_SERVER_PORT": str(code_port), "DAGSTER_CODE_LOCATION_NAME": "engagement_dagster",
    })
    return env


@pytest.fixture(scope="module")
def code_server(roles_env, tmp_path_factory):
    from dagster._grpc.client import DagsterGrpcClient

    log = tmp_path_factory.mktemp("logs") / "code-server.log"
    process = _start("code-server", roles_env, log)
    client = DagsterGrpcClient(port=int(roles_env["DAGSTER_CODE_SERVER_PORT"]), host="127.0.0.1")
    try:
        _wait("the code server", client.list_repositories, process, log)
        yield client
    finally:
        _stop(process)


def test_code_server_role_serves_the_code_location_and_names_the_run_image(code_server):
    from dagster._grpc.types import ListRepositoriesResponse
    from dagster._serdes import deserialize_value

    repositories = deserialize_value(code_server.list_repositories(), ListRepositoriesResponse)
    # The image the EcsRunLauncher will launch runs in comes from here (DAGSTER_CURRENT_IMAGE).
    assert repositories.container_image == "engagement-dagster:test"
    assert repositories.repository_symbols, "no repository loaded"
    (pointer,) = repositories.repository_code_pointer_dict.values()
    assert pointer.module == "engagement_dagster.definitions"


def test_webserver_role_loads_the_code_server_through_deploy_workspace(code_server, roles_env, tmp_path):
    port = _free_port()
    log = tmp_path / "webserver.log"
    process = _start("webserver", {**roles_env, "DAGSTER_WEBSERVER_PORT": str(port)}, log)
    query = """{ workspaceOrError { ... on Workspace { locationEntries { name
        locationOrLoadError { __typename ... on RepositoryLocation { repositories { jobs { name } } } } } } } }"""
    request = urllib.request.Request(f"http://127.0.0.1:{port}/graphql", data=json.dumps({"query": query}).encode(),
                                     headers={"Content-Type": "application/json"})

    def loaded():
        with urllib.request.urlopen(request, timeout=10) as response:
            entries = json.loads(response.read())["data"]["workspaceOrError"]["locationEntries"]
        return entries if entries and entries[0]["locationOrLoadError"] else None

    try:
        (entry,) = _wait("the webserver", loaded, process, log)
    finally:
        _stop(process)
    assert entry["name"] == "engagement_dagster"
    location = entry["locationOrLoadError"]
    assert location["__typename"] == "RepositoryLocation", location
    jobs = {job["name"] for repository in location["repositories"] for job in repository["jobs"]}
    assert {"weekly_refresh", "training", "scoring"} <= jobs


def test_daemon_role_runs_and_reports_itself_live(code_server, roles_env, tmp_path):
    log = tmp_path / "daemon.log"
    process = _start("daemon", roles_env, log)

    def live():
        check = subprocess.run([str(BIN / "dagster-daemon"), "liveness-check"], env=roles_env,
                               capture_output=True, text=True, timeout=60, check=False)
        return check.returncode == 0

    try:
        _wait("the daemon", live, process, log)
    finally:
        _stop(process)


def test_webserver_and_daemon_roles_refuse_to_start_without_the_code_server_address(roles_env):
    env = {k: v for k, v in roles_env.items() if k != "DAGSTER_CODE_SERVER_HOST"}
    for role in ("webserver", "daemon"):
        result = subprocess.run(["sh", str(ENTRYPOINT), role], env=env, capture_output=True, text=True,
                                timeout=30, check=False)
        assert result.returncode != 0
        assert "DAGSTER_CODE_SERVER_HOST" in result.stderr
