"""The docker-compose deployment, checked without a Docker engine.

* ``docker compose config`` validates docker-compose.yml with .env.example (the Compose plugin when it
  is installed, else the ``docker-compose`` command: Debian's package, which ``./klq-lab test`` installs
  when it runs as root; skipped, saying so, when neither is there), and rejects a broken copy.
* The resolved configuration has the services, healthchecks (or a documented reason), volumes, GPU
  reservation, queues and start-up order the deployment needs; .env.example covers every variable the
  compose file references, and every KLQ_* setting it passes exists in backend.settings.Settings.
* The image: Dockerfile stages and arguments, and the healthcheck commands of docker-compose.yml run
  for real against a local API, worker and dashboard (SQLite and the filesystem broker).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    from pip._vendor import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
COMPOSE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"
DOCKERFILE = REPO / "docker" / "Dockerfile"

SERVICES = {"postgres", "redis", "migrate", "api", "worker-gpu", "worker-cpu", "ui", "flower"}
KLQ_IMAGE_SERVICES = {"migrate", "api", "worker-gpu", "worker-cpu", "ui", "flower"}
DB_SERVICES = {"api", "worker-gpu", "worker-cpu"}  # use the database: start after the migrations
# KLQ_* variables that are not backend settings: read by the worker (KLQ_WORKER_GPUS) or by `klq ui`.
NON_SETTINGS_ENV = {"KLQ_WORKER_GPUS", "KLQ_API_TOKEN", "KLQ_API_URL"}
VAR_REF = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)")


# ------------------------------------------------------------------------------------------ the validator


def compose_command() -> list[str] | None:
    """A Compose CLI: the `docker compose` plugin, else a `docker-compose` executable (v1 or v2)."""
    if shutil.which("docker"):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            done = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30)
            if done.returncode == 0:
                return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def compose_env() -> dict[str, str]:
    """The environment for the CLI: none of this process's variables (values come from the env file)."""
    return {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR")}


def run_compose(args: list[str], compose_file: Path, env_file: Path | None) -> subprocess.CompletedProcess:
    cmd = compose_command()
    if cmd is None:
        pytest.skip(
            "no Compose CLI to validate docker-compose.yml: install Debian's docker-compose package "
            "(apt-get install docker-compose; `./klq-lab test` does this when run as root) or the Docker "
            "Compose plugin"
        )
    full = [*cmd, "--project-directory", str(compose_file.parent), "-f", str(compose_file)]
    if env_file is not None:
        full += ["--env-file", str(env_file)]
    return subprocess.run(full + args, capture_output=True, text=True, timeout=120, env=compose_env(),
                          cwd=compose_file.parent)


@pytest.fixture(scope="module")
def resolved() -> dict:
    """`docker compose config` of docker-compose.yml with .env.example: valid, and its output parsed."""
    done = run_compose(["config"], COMPOSE, ENV_EXAMPLE)
    assert done.returncode == 0, f"docker compose config failed:\n{done.stderr}\n{done.stdout}"
    return yaml.safe_load(done.stdout)


def test_compose_config_validates(resolved: dict) -> None:
    quiet = run_compose(["config", "--quiet"], COMPOSE, ENV_EXAMPLE)
    assert quiet.returncode == 0, quiet.stderr
    assert set(resolved["services"]) == SERVICES


def test_validator_rejects_broken_files(tmp_path: Path) -> None:
    """The validator is not a yes-man: an unknown healthcheck key and a missing required setting fail."""
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(COMPOSE.read_text().replace("      start_period: 30s\n", "      start_perod: 30s\n", 1))
    done = run_compose(["config", "--quiet"], broken, ENV_EXAMPLE)
    assert done.returncode != 0 and "start_perod" in done.stderr + done.stdout

    bad_ref = tmp_path / "ref" / "docker-compose.yml"
    bad_ref.parent.mkdir()
    text = COMPOSE.read_text()
    assert "      migrate:\n        condition:" in text
    bad_ref.write_text(text.replace("      migrate:\n        condition:", "      migrat:\n        condition:", 1))
    done = run_compose(["config", "--quiet"], bad_ref, ENV_EXAMPLE)
    assert done.returncode != 0 and "migrat" in done.stderr, done.stdout  # an undefined service

    empty_env = tmp_path / "empty.env"
    empty_env.write_text("")
    done = run_compose(["config", "--quiet"], COMPOSE, empty_env)
    assert done.returncode != 0
    assert "POSTGRES_PASSWORD" in done.stderr or "KLQ_DATABASE_URL" in done.stderr, done.stderr


# --------------------------------------------------------------------------------- the resolved services


def test_every_service_has_a_healthcheck_or_a_reason(resolved: dict) -> None:
    for name, service in resolved["services"].items():
        check = service.get("healthcheck") or {}
        disabled = check.get("disable") or check.get("test") in (["NONE"], "NONE")
        if disabled or not check:
            reason = service.get("x-healthcheck-reason", "")
            assert len(reason) > 20, f"service {name} has no healthcheck and no x-healthcheck-reason"
        else:
            assert check["test"][0] in ("CMD", "CMD-SHELL"), (name, check)
            assert check.get("interval") and check.get("timeout") and check.get("retries"), (name, check)
    assert "healthcheck" in resolved["services"]["api"]


def _mounts(service: dict) -> dict[str, str]:
    """target -> source of a service's volumes (short or long syntax, as the CLI resolved them)."""
    out = {}
    for v in service.get("volumes", []):
        if isinstance(v, str):
            source, target = v.split(":")[:2]
        else:
            source, target = v.get("source"), v["target"]
        out[target] = source
    return out


def test_named_volumes_for_database_data_and_hf_cache(resolved: dict) -> None:
    volumes = set(resolved.get("volumes") or {})
    assert {"postgres-data", "klq-data", "hf-cache"} <= volumes
    services = resolved["services"]
    assert _mounts(services["postgres"])["/var/lib/postgresql/data"].endswith("postgres-data")
    for name in ("migrate", "api", "worker-gpu", "worker-cpu"):
        mounts = _mounts(services[name])
        env = services[name]["environment"]
        assert mounts[env["KLQ_DATA_DIR"]].endswith("klq-data"), name
        assert mounts[env["HF_HOME"]].endswith("hf-cache"), name
    for name, service in services.items():  # every named volume a service mounts is declared
        for source in _mounts(service).values():
            assert source.startswith(("/", ".")) or source.split("_", 1)[-1] in volumes or source in volumes, (
                name, source)


def test_gpu_worker_reserves_nvidia_gpus_and_queues_are_split(resolved: dict) -> None:
    services = resolved["services"]
    devices = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices), devices
    assert str(devices[0].get("count")) in ("all", "-1")  # Compose v2 prints "all" as -1

    def queues(name: str) -> str:
        command = services[name]["command"]
        assert command[:2] == ["klq", "worker"], command
        return command[command.index("--queues") + 1]

    assert queues("worker-gpu") == "gpu" and queues("worker-cpu") == "cpu"
    assert "deploy" not in services["worker-cpu"]
    assert services["worker-cpu"]["environment"]["KLQ_WORKER_GPUS"] == ""
    assert services["migrate"]["command"] == ["klq", "migrate"]
    assert services["flower"]["command"][:4] == ["celery", "-A", "worker.celery_app:app", "flower"]


def test_klq_commands_of_the_services_and_the_image_parse(resolved: dict) -> None:
    """Every `klq ...` that a service or the image's CMD runs names a sub-command, with flags, of the
    console script that pyproject.toml installs as `klq`."""
    target = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]["klq"]
    module, _, function = target.partition(":")
    cli = importlib.import_module(module)
    assert callable(getattr(cli, function)), target
    services = resolved["services"]
    commands = {name: s["command"] for name, s in services.items() if (s.get("command") or [""])[0] == "klq"}
    assert {"migrate", "api", "worker-gpu", "worker-cpu", "ui"} <= set(commands), commands
    cmd = re.search(r"^CMD (\[.*\])$", DOCKERFILE.read_text(), re.M)
    commands["Dockerfile CMD"] = json.loads(cmd.group(1))
    for name, command in commands.items():
        assert command[0] == "klq", (name, command)
        try:
            args = cli.build_parser().parse_args(command[1:])
        except SystemExit:
            raise AssertionError(f"{name}: `{' '.join(command)}` is not a valid klq command") from None
        assert args.command == command[1], (name, command)


def test_startup_order(resolved: dict) -> None:
    services = resolved["services"]
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["migrate"].get("restart", "no") == "no"
    for name in DB_SERVICES:
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully", name
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy", name
    assert services["ui"]["depends_on"]["api"]["condition"] == "service_healthy"
    for name in KLQ_IMAGE_SERVICES:
        assert services[name]["image"] == services["api"]["image"], name
        assert services[name]["build"]["dockerfile"] == "docker/Dockerfile", name


def test_settings_passed_are_real_and_agree(resolved: dict) -> None:
    from backend.settings import Settings

    fields = {f"KLQ_{name.upper()}" for name in Settings.model_fields}
    services = resolved["services"]
    for name in KLQ_IMAGE_SERVICES:
        env = services[name].get("environment") or {}
        unknown = {k for k in env if k.startswith("KLQ_")} - fields - NON_SETTINGS_ENV
        assert not unknown, f"{name} passes KLQ_ variables that no setting reads: {unknown}"
    # the processes that share the database and broker agree on them
    shared = ("KLQ_DATABASE_URL", "KLQ_BROKER_URL", "KLQ_DATA_DIR", "KLQ_MODEL_ROOTS", "KLQ_QUEUES")
    for key in shared:
        assert len({services[n]["environment"][key] for n in ("migrate", *DB_SERVICES)}) == 1, key
    assert services["flower"]["environment"]["KLQ_BROKER_URL"] == services["api"]["environment"]["KLQ_BROKER_URL"]
    # and the example's values make valid settings
    env = {k: str(v) for k, v in services["api"]["environment"].items() if k in fields}
    settings = Settings(**{k[4:].lower(): v for k, v in env.items()})
    assert settings.resolved_database_url.startswith("postgresql")
    assert settings.default_queue in settings.queues


# ------------------------------------------------------------------------------------- .env.example


def _env_example() -> dict[str, str]:
    out = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f".env.example: not KEY=VALUE: {line!r}"
            assert key not in out, f".env.example sets {key} twice"
            out[key] = value
    return out


def test_env_example_covers_every_variable_compose_references() -> None:
    referenced = set(VAR_REF.findall(COMPOSE.read_text()))
    example = _env_example()
    missing = referenced - set(example)
    assert not missing, f".env.example lacks {sorted(missing)}"
    unused = set(example) - referenced - {"COMPOSE_PROJECT_NAME"}
    assert not unused, f".env.example sets variables docker-compose.yml never reads: {sorted(unused)}"
    for key in ("KLQ_DATABASE_URL", "KLQ_BROKER_URL", "KLQ_MODEL_ROOTS", "KLQ_ALLOW_HUB_MODELS",
                "KLQ_JUDGE_BASE_URL", "KLQ_JUDGE_API_KEY", "KLQ_JUDGE_MODEL", "POSTGRES_PASSWORD"):
        assert key in example, key
    # the database URL of the example points at the example's postgres service and credentials
    url = example["KLQ_DATABASE_URL"]
    assert f"{example['POSTGRES_USER']}:{example['POSTGRES_PASSWORD']}@postgres:5432/{example['POSTGRES_DB']}" in url


# ------------------------------------------------------------------------------------------- the image


def test_dockerfile_variants_and_files() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^ARG VARIANT=cuda$", text, re.M)
    stages = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", text, re.M | re.I)
    names = {alias for _, alias in stages}
    assert {"base-cuda", "base-cpu", "app"} <= names, stages
    assert ("base-${VARIANT}", "app") in stages
    cuda_base = re.search(r"^ARG CUDA_BASE=(\S+)", text, re.M).group(1)
    assert "cuda" in cuda_base and "runtime" in cuda_base, cuda_base
    assert "download.pytorch.org/whl/cpu" in text
    assert (REPO / "docker" / "entrypoint.sh").stat().st_mode & 0o111
    assert (REPO / "docker" / "healthcheck.py").exists()
    sys.path.insert(0, str(REPO / "docker"))
    try:
        import healthcheck
        import install_deps
    finally:
        sys.path.remove(str(REPO / "docker"))
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    extras = pyproject["project"]["optional-dependencies"]
    default_extras = re.search(r"^ARG EXTRAS=(\S+)", text, re.M).group(1).split(",")
    assert set(default_extras) <= set(extras), default_extras
    # the worker healthcheck knows the node names `klq worker` gives itself (with and without a pid)
    pattern = healthcheck.worker_pattern("gpu,cpu", "host-1")
    assert pattern.match("klq-gpu-cpu@host-1") and pattern.match("klq-gpu-cpu-4242@host-1")
    assert not pattern.match("klq-gpu-4242@host-1") and not pattern.match("klq-gpu-cpu-1@host-2")
    assert "klq-{args.queues.replace(',', '-')}" in (REPO / "klqlab" / "cli.py").read_text()
    reqs = install_deps.requirements(str(REPO / "pyproject.toml"), default_extras)
    assert any(r.startswith("torch") for r in reqs) and any(r.startswith("flower") for r in reqs)
    assert "app" in default_extras and set(extras["app"]) <= set(reqs)  # the image runs the services
    assert any(r.startswith("flower") for r in extras["ops"])
    ignored = (REPO / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored and ".env" in ignored


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _healthcheck(service: dict, port: int | None = None) -> list[str]:
    """A service's healthcheck as a local command: this Python, this checkout, this port."""
    test = service["healthcheck"]["test"]
    assert test[0] == "CMD" and test[1] == "python" and test[2] == "/app/docker/healthcheck.py", test
    args = list(test[3:])
    if port is not None:
        args = [re.sub(r"127\.0\.0\.1:\d+", f"127.0.0.1:{port}", a) for a in args]
    return [sys.executable, str(REPO / "docker" / "healthcheck.py"), *args]


def _wait(check, timeout: float, what: str, logs: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            tails = "".join(f"\n--- {p.name}:\n{p.read_text(errors='replace')[-2000:]}"
                            for p in sorted(logs.glob("*.log"))) if logs else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {what}{tails}")
        time.sleep(0.3)


@pytest.fixture
def local_services(tmp_path: Path) -> Iterator[dict]:
    """`klq api`, `klq worker --queues cpu` and `klq ui` on a fresh SQLite + filesystem data dir."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KLQ_", "CUDA_"))}
    env.update(KLQ_DATA_DIR=str(tmp_path / "data"), KLQ_WORKER_GPUS="", PYTHONUNBUFFERED="1",
               KLQ_PRINT_INITIAL_TOKEN="false")
    subprocess.run([sys.executable, "-m", "klqlab.cli", "migrate"], cwd=REPO, env=env, check=True,
                   capture_output=True, timeout=120)
    api_port, ui_port = _free_port(), _free_port()
    commands = {
        "api": ["api", "--host", "127.0.0.1", "--port", str(api_port), "--log-level", "warning"],
        "worker": ["worker", "--queues", "cpu", "--concurrency", "1", "--loglevel", "INFO"],
        "ui": ["ui", "--host", "127.0.0.1", "--port", str(ui_port), "--api-url", f"http://127.0.0.1:{api_port}"],
    }
    procs = {}
    for name, args in commands.items():
        log = (tmp_path / f"{name}.log").open("wb")
        procs[name] = subprocess.Popen([sys.executable, "-m", "klqlab.cli", *args], cwd=REPO, env=env,
                                       stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield {"env": env, "api_port": api_port, "ui_port": ui_port, "procs": procs, "logs": tmp_path}
    finally:
        for proc in procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 9)
            proc.wait(10)


@pytest.mark.slow
def test_healthcheck_commands_against_local_services(resolved: dict, local_services: dict) -> None:
    services, env = resolved["services"], local_services["env"]

    def healthy(cmd: list[str]) -> bool:
        for name, proc in local_services["procs"].items():
            log = (local_services["logs"] / f"{name}.log").read_text(errors="replace")
            assert proc.poll() is None, f"{name} exited:\n{log[-3000:]}"
        return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, timeout=60).returncode == 0

    api_check = _healthcheck(services["api"], local_services["api_port"])
    ui_check = _healthcheck(services["ui"], local_services["ui_port"])
    cpu_check = _healthcheck(services["worker-cpu"])
    logs = local_services["logs"]
    _wait(lambda: healthy(api_check), 90, "the API's healthcheck to pass", logs)
    _wait(lambda: healthy(cpu_check), 90, "the CPU worker's healthcheck to pass", logs)
    _wait(lambda: healthy(ui_check), 90, "the dashboard's healthcheck to pass", logs)
    # a worker of another queue (the GPU worker's check here), and a port nobody listens on, fail
    gpu = subprocess.run(_healthcheck(services["worker-gpu"]), cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=90)
    assert gpu.returncode == 1 and "klq-gpu" in gpu.stdout and "klq-cpu-" in gpu.stdout, gpu.stdout + gpu.stderr
    dead = subprocess.run(_healthcheck(services["api"], _free_port()), capture_output=True, text=True, timeout=30)
    assert dead.returncode == 1 and "refused" in dead.stdout.lower(), dead.stdout


# ------------------------------------------------------------------------------------------- the docs


def test_configuration_reference_is_up_to_date() -> None:
    """docs/CONFIGURATION.md is what docs/gen_config_reference.py makes from the code today."""
    done = subprocess.run([sys.executable, str(REPO / "docs" / "gen_config_reference.py"), "--check"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    text = (REPO / "docs" / "CONFIGURATION.md").read_text()
    from backend.settings import Settings
    from klq.config import RunConfig

    assert all(f"`KLQ_{name.upper()}`" in text for name in Settings.model_fields)
    assert all(f"`train.{name}`" in text for name in RunConfig.model_fields["train"].annotation.model_fields)
