"""docker-compose.yml, Dockerfile.api and Dockerfile.worker, checked by reading them.

No Docker engine runs on the development or CI machines, so these files are parsed (PyYAML, simple
Dockerfile line parsing) and checked against the code they deploy: the `lorabake` CLI's commands, the
Settings fields behind every LORABAKE_* variable, the torch pin in pyproject.toml, the paths in the repo.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import click
import pytest
import yaml

from lorabake.cli import main as cli_main
from shared.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
API_DOCKERFILE = ROOT / "Dockerfile.api"
WORKER_DOCKERFILE = ROOT / "Dockerfile.worker"

REQUIRED_SERVICES = {"postgres", "redis", "minio", "minio-init", "migrate", "api", "worker"}
# service -> the lorabake subcommand it must run
LORABAKE_COMMANDS = {"migrate": "migrate", "api": "api", "worker": "worker"}
ONE_OFF_SERVICES = ("migrate", "minio-init")
APP_DEPENDS_ON = {
    "migrate": "service_completed_successfully",
    "redis": "service_healthy",
    "minio-init": "service_completed_successfully",
}


# -- helpers: compose ------------------------------------------------------------------------------------
_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")


def interpolate(value: object) -> str:
    """What Compose makes of a value when no .env and no shell variable is set: `${X:-default}` -> default."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        return m.group(2) or ""

    return _VAR.sub(sub, str(value))


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def services(compose: dict) -> dict[str, dict]:
    return compose["services"]


def env_of(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def command_of(service: dict) -> list[str]:
    cmd = service.get("command") or []
    return shlex.split(cmd) if isinstance(cmd, str) else [str(c) for c in cmd]


def depends_of(service: dict) -> dict[str, str]:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return dict.fromkeys(deps, "service_started")
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


def published_ports(service: dict) -> set[int]:
    """Host ports a service publishes (short syntax `[IP:]HOST:CONTAINER` or long syntax)."""
    ports = set()
    for p in service.get("ports") or []:
        if isinstance(p, dict):
            ports.add(int(p["published"]))
        else:
            parts = str(p).split("/")[0].split(":")
            ports.add(int(parts[-2] if len(parts) >= 2 else parts[-1]))
    return ports


def volume_target(volume: object) -> str:
    """The container path of a volume entry (short syntax `SOURCE:TARGET[:MODE]` or long syntax)."""
    if isinstance(volume, dict):
        return str(volume["target"])
    parts = interpolate(volume).split(":")
    return parts[1] if len(parts) >= 2 else parts[0]


# -- helpers: Dockerfiles --------------------------------------------------------------------------------
def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs: comments dropped, backslash continuations joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # a comment line inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        if full:
            keyword, _, args = full.partition(" ")
            out.append((keyword.upper(), args.strip()))
    assert not pending, f"{path.name}: the last instruction ends with a line continuation"
    return out


def arg_defaults(instructions: list[tuple[str, str]]) -> dict[str, str]:
    defaults = {}
    for keyword, args in instructions:
        if keyword == "ARG" and "=" in args:
            name, _, value = args.partition("=")
            defaults[name.strip()] = value.strip().strip('"')
    return defaults


def expand_args(text: str, defaults: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: defaults.get(m.group(1) or m.group(2), m.group(0)), text)


def runs(instructions: list[tuple[str, str]]) -> list[str]:
    defaults = arg_defaults(instructions)
    return [expand_args(args, defaults) for keyword, args in instructions if keyword == "RUN"]


def copy_sources(args: str) -> list[str] | None:
    """The context paths a COPY/ADD reads; None for `--from=` (copies from another stage or image)."""
    words = json.loads(args) if args.startswith("[") else shlex.split(args)
    flags = [w for w in words if w.startswith("--")]
    if any(f.startswith("--from") for f in flags):
        return None
    paths = [w for w in words if not w.startswith("--")]
    assert len(paths) >= 2, f"COPY {args!r} needs a source and a destination"
    return paths[:-1]


def dockerignore_patterns() -> list[str]:
    path = ROOT / ".dockerignore"
    if not path.exists():
        return []
    lines = [ln.strip() for ln in path.read_text().splitlines()]
    return [ln.rstrip("/") for ln in lines if ln and not ln.startswith("#") and not ln.startswith("!")]


def dockerignored(rel: str, patterns: list[str]) -> str | None:
    for pattern in patterns:
        pattern = pattern.removeprefix("/").removeprefix("**/")
        parts = rel.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatchcase(p, pattern) for p in prefixes):
            return pattern
    return None


def worker_torch_pin() -> str:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = [d for d in project["optional-dependencies"]["worker"] if re.match(r"torch\s*==", d)]
    assert len(pins) == 1, f"pyproject's [worker] extra must pin torch exactly once, found {pins}"
    return pins[0].split("==", 1)[1].strip()


def final_user(path: Path) -> str | None:
    users = [args for keyword, args in dockerfile_instructions(path) if keyword == "USER"]
    return users[-1] if users else None


# -- compose -----------------------------------------------------------------------------------------------
def test_required_services_exist(services: dict[str, dict]) -> None:
    missing = REQUIRED_SERVICES - set(services)
    assert not missing, f"docker-compose.yml lacks services {sorted(missing)}"


@pytest.mark.parametrize("service_name", sorted(LORABAKE_COMMANDS))
def test_app_services_run_real_lorabake_subcommands(services: dict[str, dict], service_name: str) -> None:
    cmd = command_of(services[service_name])
    assert cmd[:1] == ["lorabake"], f"{service_name}: command {cmd} does not run the lorabake CLI"
    subcommands = set(cli_main.commands)
    assert len(cmd) >= 2 and cmd[1] in subcommands, (
        f"{service_name}: {cmd[1:2]} is not a lorabake subcommand ({sorted(subcommands)})"
    )
    assert cmd[1] == LORABAKE_COMMANDS[service_name], f"{service_name} must run `lorabake {cmd[1]}`"
    # The options must parse too (an unknown or misspelt option raises here, as it would in the container).
    command = cli_main.commands[cmd[1]]
    try:
        command.make_context(f"lorabake {cmd[1]}", list(cmd[2:]))
    except click.ClickException as exc:
        pytest.fail(f"{service_name}: `{' '.join(cmd)}` does not parse: {exc.format_message()}")


def test_every_lorabake_variable_is_a_settings_field(compose: dict, services: dict[str, dict]) -> None:
    fields = set(Settings.model_fields)
    places = {f"service {name}": env_of(svc) for name, svc in services.items()}
    places["x-lorabake-env"] = {k: str(v) for k, v in (compose.get("x-lorabake-env") or {}).items()}
    seen = 0
    for place, env in places.items():
        for key in env:
            if key.startswith("LORABAKE_"):
                seen += 1
                assert key.removeprefix("LORABAKE_").lower() in fields, (
                    f"{place} sets {key}, which is no field of shared.settings.Settings"
                )
    assert seen, "docker-compose.yml sets no LORABAKE_* variable at all"


@pytest.mark.parametrize("service_name", ["api", "worker", "migrate"])
def test_app_settings_point_at_the_compose_services(
    services: dict[str, dict], service_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The values (with .env defaults) load into Settings and name the services of this compose file."""
    env = {k: interpolate(v) for k, v in env_of(services[service_name]).items()}
    for key in [k for k in os.environ if k.startswith("LORABAKE_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = Settings()

    db = urlsplit(settings.database_url)
    assert db.scheme == "postgresql+psycopg", f"{service_name}: database URL {settings.database_url}"
    assert db.hostname in services and db.port == 5432
    pg_env = {k: interpolate(v) for k, v in env_of(services[db.hostname]).items()}
    assert (db.username, db.password, db.path.lstrip("/")) == (
        pg_env["POSTGRES_USER"],
        pg_env["POSTGRES_PASSWORD"],
        pg_env["POSTGRES_DB"],
    ), f"{service_name}: the database URL's credentials differ from the postgres service's"

    broker = urlsplit(settings.broker_url)
    assert broker.scheme == "redis" and broker.hostname in services, f"broker URL {settings.broker_url}"
    assert services[broker.hostname]["image"].startswith("redis")

    assert settings.storage_backend == "s3"
    s3 = urlsplit(settings.s3_endpoint_url or "")
    assert s3.hostname == "minio" and s3.port == 9000, f"internal S3 endpoint {settings.s3_endpoint_url}"
    public = urlsplit(settings.s3_public_endpoint_url or "")
    assert public.hostname == "localhost", f"public S3 endpoint {settings.s3_public_endpoint_url}"
    assert public.port in published_ports(services["minio"]), "MinIO does not publish the public S3 port"
    minio_env = {k: interpolate(v) for k, v in env_of(services["minio"]).items()}
    assert (settings.s3_access_key_id, settings.s3_secret_access_key) == (
        minio_env["MINIO_ROOT_USER"],
        minio_env["MINIO_ROOT_PASSWORD"],
    ), f"{service_name}: S3 credentials differ from MinIO's"


def test_worker_serves_metrics_and_the_api_routes_queues(
    services: dict[str, dict], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker's own /metrics port is on and reachable in the network; the API gets the queue routes."""
    worker_env = {k: interpolate(v) for k, v in env_of(services["worker"]).items()}
    port = int(worker_env["LORABAKE_WORKER_METRICS_PORT"])
    assert port > 0 and str(port) in [str(p) for p in services["worker"].get("expose", [])]
    api_env = {k: interpolate(v) for k, v in env_of(services["api"]).items()}
    monkeypatch.setenv("LORABAKE_QUEUE_ROUTES", api_env["LORABAKE_QUEUE_ROUTES"])
    assert Settings().queue_routes == {}  # a dict, as JSON: empty by default, every family in one queue


def test_worker_reserves_an_nvidia_gpu(services: dict[str, dict]) -> None:
    deploy = services["worker"].get("deploy") or {}
    devices = ((deploy.get("resources") or {}).get("reservations") or {}).get("devices") or []
    gpus = [d for d in devices if d.get("driver") == "nvidia" and "gpu" in (d.get("capabilities") or [])]
    assert gpus, f"worker has no nvidia GPU reservation (devices: {devices})"
    assert gpus[0].get("count") == 1, "each worker container trains on one GPU: count must be 1"


@pytest.mark.parametrize("service_name", ["api", "worker"])
def test_app_services_wait_for_migration_broker_and_bucket(
    services: dict[str, dict], service_name: str
) -> None:
    deps = depends_of(services[service_name])
    for dep, condition in APP_DEPENDS_ON.items():
        assert deps.get(dep) == condition, f"{service_name} must depend on {dep} with {condition}"


def test_one_off_services_wait_for_their_server(services: dict[str, dict]) -> None:
    assert depends_of(services["migrate"]).get("postgres") == "service_healthy"
    assert depends_of(services["minio-init"]).get("minio") == "service_healthy"


def test_every_awaited_health_has_a_healthcheck(services: dict[str, dict]) -> None:
    for name, svc in services.items():
        for dep, condition in depends_of(svc).items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            if condition == "service_healthy":
                assert services[dep].get("healthcheck", {}).get("test"), f"{dep} has no healthcheck"


@pytest.mark.parametrize("service_name", ONE_OFF_SERVICES)
def test_one_off_services_are_not_restarted(services: dict[str, dict], service_name: str) -> None:
    restart = services[service_name].get("restart")
    assert restart in (None, "no"), f"{service_name} runs once; restart is {restart!r}"


def test_minio_init_creates_the_bucket_the_service_uses(services: dict[str, dict]) -> None:
    script = interpolate(" ".join(command_of(services["minio-init"])))
    created = re.findall(r"\bmc\s+mb\b(?:\s+--?[\w-]+)*\s+([\w.-]+)/([\w.-]+)", script)
    assert created, f"minio-init does not run `mc mb ALIAS/BUCKET`: {script}"
    bucket = interpolate(env_of(services["api"])["LORABAKE_S3_BUCKET"])
    assert bucket in {b for _, b in created}, f"minio-init creates {created}, the service uses {bucket!r}"
    aliases = re.findall(r"\bmc\s+alias\s+set\s+(\S+)\s+(\S+)", script)
    assert (created[0][0], "http://minio:9000") in aliases, (
        f"minio-init's alias must point at minio: {aliases}"
    )


def test_services_build_from_the_right_dockerfiles(services: dict[str, dict]) -> None:
    expected = {"migrate": API_DOCKERFILE, "api": API_DOCKERFILE, "worker": WORKER_DOCKERFILE}
    for name, dockerfile in expected.items():
        build = services[name].get("build") or {}
        assert isinstance(build, dict) and build.get("dockerfile") == dockerfile.name, (
            f"{name}: build {build}"
        )
        assert (ROOT / build.get("context", ".") / build["dockerfile"]).resolve() == dockerfile


def test_api_is_published_and_its_healthcheck_probes_readyz(services: dict[str, dict]) -> None:
    from api.health import router

    api = services["api"]
    cmd = command_of(api)
    port = int(cmd[cmd.index("--port") + 1])
    assert port in published_ports(api), f"api listens on {port} but publishes {published_ports(api)}"
    probe = " ".join(map(str, api.get("healthcheck", {}).get("test") or []))
    assert f":{port}/readyz" in probe, f"api healthcheck does not probe /readyz on port {port}: {probe}"
    assert "/readyz" in {route.path for route in router.routes}, "the API has no /readyz route"


def test_worker_volumes_hold_the_models_and_hf_cache(services: dict[str, dict]) -> None:
    worker = services["worker"]
    env = env_of(worker)
    targets = {volume_target(v) for v in worker.get("volumes") or []}
    assert env.get("LORABAKE_MODELS_DIR") in targets, f"models dir is not a volume ({targets})"
    assert env.get("HF_HOME") in targets, f"the Hugging Face cache is not a volume ({targets})"


# -- Dockerfiles -------------------------------------------------------------------------------------------
def test_api_image_installs_only_the_api_extra() -> None:
    text = API_DOCKERFILE.read_text()
    installs = [r for r in runs(dockerfile_instructions(API_DOCKERFILE)) if "pip install" in r]
    assert any(re.search(r"pip install\b.*[\"']?[^\s\"']*\[api\]", r) for r in installs), (
        f"Dockerfile.api does not `pip install .[api]`: {installs}"
    )
    for word in ("torch", "cuda", "nvidia", "[worker]", "[dev]"):
        assert word not in text.lower(), f"Dockerfile.api mentions {word!r}: the API image has no GPU stack"


def test_worker_image_is_cuda_based_and_installs_the_pinned_cuda_torch() -> None:
    instructions = dockerfile_instructions(WORKER_DOCKERFILE)
    defaults = arg_defaults(instructions)
    bases = [expand_args(args.split()[0], defaults) for keyword, args in instructions if keyword == "FROM"]
    assert bases, "Dockerfile.worker has no FROM"
    base = bases[-1]
    assert base.startswith(("nvidia/cuda:", "pytorch/pytorch:")) and "cuda" in base, (
        f"the worker's base image {base} is not a CUDA image"
    )
    pin = worker_torch_pin()
    torch_runs = [r for r in runs(instructions) if re.search(rf"\btorch=={re.escape(pin)}(\s|$)", r)]
    assert torch_runs, f"Dockerfile.worker does not install torch=={pin} (pyproject's [worker] pin)"
    cuda_index = r"--(extra-)?index-url\s+\S*download\.pytorch\.org/whl/cu\d+"
    assert any(re.search(cuda_index, r) for r in torch_runs), (
        f"torch=={pin} must come from a CUDA wheel index: {torch_runs}"
    )
    all_runs = " ".join(runs(instructions))
    assert re.search(r"pip install\b.*\[worker\]", all_runs), "Dockerfile.worker does not install .[worker]"
    assert "bitsandbytes" in all_runs, "Dockerfile.worker does not install bitsandbytes (AdamW8bit)"


def test_worker_image_environment() -> None:
    instructions = dockerfile_instructions(WORKER_DOCKERFILE)
    env_lines = " ".join(args for keyword, args in instructions if keyword == "ENV")
    assert re.search(r"\bHF_HOME=/cache/huggingface\b", env_lines)
    assert re.search(r"\bLORABAKE_MODELS_DIR=/models\b", env_lines)


@pytest.mark.parametrize("dockerfile", [API_DOCKERFILE, WORKER_DOCKERFILE], ids=lambda p: p.name)
def test_images_run_as_a_non_root_user(dockerfile: Path) -> None:
    user = final_user(dockerfile)
    assert user, f"{dockerfile.name} sets no USER (it would run as root)"
    assert user.split(":")[0] not in ("root", "0"), f"{dockerfile.name} runs as {user}"


@pytest.mark.parametrize("dockerfile", [API_DOCKERFILE, WORKER_DOCKERFILE], ids=lambda p: p.name)
def test_lorabake_env_in_images_are_settings_fields(dockerfile: Path) -> None:
    env_text = " ".join(args for keyword, args in dockerfile_instructions(dockerfile) if keyword == "ENV")
    for name in re.findall(r"\bLORABAKE_(\w+)=", env_text):
        assert name.lower() in Settings.model_fields, f"{dockerfile.name}: no setting LORABAKE_{name}"


@pytest.mark.parametrize(
    ("dockerfile", "packages"),
    [
        (API_DOCKERFILE, {"shared", "api", "migrations", "lorabake"}),
        (WORKER_DOCKERFILE, {"shared", "worker", "migrations", "lorabake"}),
    ],
    ids=["Dockerfile.api", "Dockerfile.worker"],
)
def test_copied_paths_exist_and_reach_the_build(dockerfile: Path, packages: set[str]) -> None:
    patterns = dockerignore_patterns()
    copied: set[str] = set()
    for keyword, args in dockerfile_instructions(dockerfile):
        if keyword not in ("COPY", "ADD"):
            continue
        sources = copy_sources(args)
        if sources is None:
            continue
        matched = []
        for src in sources:
            rel = src.removeprefix("./").rstrip("/") or "."
            if any(ch in rel for ch in "*?["):
                matched += [p.relative_to(ROOT).as_posix() for p in ROOT.glob(rel)]
            else:
                assert (ROOT / rel).exists(), f"{dockerfile.name}: COPY {src} does not exist in the repo"
                matched.append(rel)
        assert matched, f"{dockerfile.name}: `{keyword} {args}` copies nothing"
        for rel in matched:
            hit = dockerignored(rel, patterns)
            assert hit is None, f"{dockerfile.name} copies {rel}, which .dockerignore excludes ({hit})"
        copied.update(matched)
    assert "pyproject.toml" in copied, f"{dockerfile.name} does not copy pyproject.toml"
    missing = packages - copied
    assert not missing, f"{dockerfile.name} does not copy the packages {sorted(missing)}"


def test_api_image_builds_the_web_page_in_a_node_stage_and_ships_only_its_build() -> None:
    """The page (api/web/, served at `/`) is built with Node in a stage of its own; the final image gets its
    dist/ as package data of `api` (pyproject's package-data), never node_modules or the sources."""
    instructions = dockerfile_instructions(API_DOCKERFILE)
    stages = [args.split() for keyword, args in instructions if keyword == "FROM"]
    web = [words for words in stages if words[0].startswith("node:") and "AS" in [w.upper() for w in words]]
    assert web, f"Dockerfile.api has no `FROM node:... AS stage` for the web page: {stages}"
    name = web[0][-1]
    assert stages[-1][0].startswith("python:"), "the final stage must be the Python one"
    all_runs = runs(instructions)
    assert any("npm ci" in r for r in all_runs) and any("npm run build" in r for r in all_runs)
    copies = [args for keyword, args in instructions if keyword == "COPY" and f"--from={name}" in args]
    assert any(re.search(r"\bdist\s+\S*/api/web/dist$", c) for c in copies), (
        f"the web stage's dist/ is not copied into api/web/dist: {copies}"
    )
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert any(p.startswith("web/dist/") for p in package_data.get("api", [])), (
        "pyproject's package-data does not ship api/web/dist (the installed API would serve no page)"
    )
    build_script = json.loads((ROOT / "api" / "web" / "package.json").read_text())["scripts"]["build"]
    assert build_script.startswith("vite build"), build_script
