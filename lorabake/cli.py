"""`lorabake` — run the service (embedded or split), manage keys, or train without any service."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import click

from lorabake import remote_commands
from lorabake.logs import library_level, setup_logging
from shared.settings import Settings, get_settings

log = logging.getLogger("lorabake.cli")


def _set_log_level(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    # Through the environment, so the processes this one starts (serve's worker) log alike.
    if value is not None:
        os.environ["LORABAKE_LOG_LEVEL"] = value.lower()
        get_settings.cache_clear()


log_level_option = click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
    default=None,
    expose_value=False,
    is_eager=True,
    callback=_set_log_level,
    help="Our log lines from this level; debug also shows other libraries' (Celery, uvicorn, transformers). "
    "Default: LORABAKE_LOG_LEVEL (info).",
)


@click.group()
def main() -> None:
    """lorabake: Kohya-compatible LoRA training as a service."""


@main.command()
def migrate() -> None:
    """Create or upgrade the database schema (Alembic)."""
    from shared.db.migrate import upgrade

    settings = get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.database_url)
    click.echo("database is at the latest schema")


@main.command("create-key")
@click.option("--owner", required=True, help="Who the key's jobs belong to.")
@click.option("--name", default="", help="A label to recognize the key by.")
@click.option("--admin", is_flag=True, help="May also manage every owner's keys over the API (/v1/keys).")
@click.option(
    "--scope",
    "scopes",
    multiple=True,
    help="What the key may do (repeat it): jobs:read, jobs:write, datasets:read, datasets:write, "
    "webhooks:read, webhooks:write. Default: all of them.",
)
def create_key(owner: str, name: str, admin: bool, scopes: tuple[str, ...]) -> None:
    """Create an API key and print it (it is shown only once)."""
    from shared.db.keys import add_api_key
    from shared.db.session import session_scope
    from shared.errors import LorabakeError

    try:
        with session_scope(get_settings().database_url) as session:
            _, key = add_api_key(session, owner, name, scopes=scopes or None, admin=admin)
    except LorabakeError as exc:
        raise click.UsageError(exc.message) from exc
    click.echo(key)


@main.command()
@click.option("--host", default=None, help="Default: LORABAKE_API_HOST (127.0.0.1).")
@click.option("--port", type=int, default=None, help="Default: LORABAKE_API_PORT (8000).")
@log_level_option
def api(host: str | None, port: int | None) -> None:
    """Run the HTTP API only."""
    from api.app import create_app
    from lorabake.serving import run_api

    settings = get_settings()
    setup_logging(settings.log_level)
    host, port = host or settings.api_host, port or settings.api_port
    run_api(
        create_app(settings),
        host,
        port,
        settings.log_level,
        on_listening=lambda: log.info("lorabake api is listening on http://%s:%s", host, port),
    )


def _queue_names(text: str | None) -> list[str]:
    from shared.jobs.routing import QUEUE_NAME

    names = [q.strip() for q in (text or "").split(",") if q.strip()]
    bad = [q for q in names if not QUEUE_NAME.match(q)]
    if bad:
        raise click.BadParameter(f"{bad[0]!r} is not a queue name (letters, digits, '.', '_', '-')")
    return names


def _worker_argv(queues: list[str], concurrency: int, log_level: str) -> list[str]:
    # One child per GPU, replaced after every job so its GPU memory is returned to the driver. Celery's
    # level is that of the root logger (the libraries'); ours keep theirs (lorabake/logs.py).
    return [
        *(() if log_level == "debug" else ("--quiet",)),  # no banner
        "worker",
        "--loglevel",
        library_level(log_level),
        "--concurrency",
        str(concurrency),
        "--pool",
        "prefork",
        "--max-tasks-per-child",
        "1",
        "-Q",
        ",".join(queues),
        "--without-gossip",
        "--without-mingle",
    ]


@main.command()
@click.option(
    "--concurrency",
    type=int,
    default=1,
    show_default=True,
    help="Jobs at once. Run one worker per GPU (CUDA_VISIBLE_DEVICES).",
)
@click.option(
    "--queues",
    default=None,
    help="Named queues to take jobs from, comma-separated (e.g. a GPU class: sdxl-24gb). "
    "Default: LORABAKE_QUEUE_NAME.",
)
@click.option(
    "--ready-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    hidden=True,
    help="Created once the worker takes jobs (`serve` waits for it).",
)
@log_level_option
def worker(concurrency: int, queues: str | None, ready_file: Path | None) -> None:
    """Run a Celery training worker (and, beside it, its heartbeat and a reconciler)."""
    from celery.signals import worker_ready

    from shared.catalogue.reporting import report_before_start
    from shared.jobs.workers import worker_id

    settings = get_settings()
    setup_logging(settings.log_level)
    if ready_file is not None:
        worker_ready.connect(lambda **_: ready_file.touch(), weak=False)
    served = _queue_names(queues) or [settings.queue_name]
    report_before_start(settings, worker_id())  # before the slow imports: the API knows its models sooner

    from worker.celery_app import app
    from worker.metrics import process_dir
    from worker.stopping import stop_on_shutdown

    metrics_dir = process_dir.prepare(settings)  # before Celery forks: its children write their metrics there
    # A process of its own, not a thread: the Celery pool forks children from this one, which must hold no
    # database connections or locks for them to inherit.
    duties = subprocess.Popen(
        [
            *(sys.executable, "-m", "lorabake.cli", "worker-duties"),
            *("--parent", str(os.getpid()), "--queues", ",".join(served), "--slots", str(concurrency)),
        ],
        env={**os.environ, "LORABAKE_DATA_DIR": str(settings.data_dir)},
    )
    stop_on_shutdown(duties)
    try:
        app.worker_main(_worker_argv(served, concurrency, settings.log_level))
    finally:
        duties.terminate()
        process_dir.remove(metrics_dir)


@main.command("worker-duties", hidden=True)
@click.option("--parent", type=int, required=True, help="The worker process this one serves.")
@click.option("--queues", default=None, help="The queues that worker consumes (for its heartbeat).")
@click.option("--slots", type=int, default=1, help="Jobs that worker runs at once (its concurrency).")
def worker_duties(parent: int, queues: str | None, slots: int) -> None:
    """The worker's heartbeat and a reconciler, until the worker process is gone."""
    from shared.jobs.duties import run_worker_duties
    from worker.metrics.server import serve_worker_metrics

    # Ctrl-C in a terminal reaches the worker's whole process group: this process ends when its worker
    # starts its shutdown (SIGTERM, worker/stopping.py) or is gone.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stop: list[int] = []
    signal.signal(signal.SIGTERM, lambda sig, _: stop.append(sig))
    setup_logging(get_settings().log_level)
    serve_worker_metrics(get_settings())  # the worker's metrics port, when set: a thread of this process
    run_worker_duties(get_settings(), parent, _queue_names(queues), max(1, slots), stop=lambda: bool(stop))


def _requeue_interrupted(settings: Settings) -> None:
    """The embedded mode has one worker and it is not running yet: a job that shows as running was cut off
    by the last shutdown. Queue it again at once (it resumes), without waiting for its lease to run out."""
    from shared.jobs.duties import build_reconciler

    report = build_reconciler(settings, holder="serve").take_back_interrupted()
    for job_id in report.requeued:
        click.echo(f"job {job_id} was interrupted by the last shutdown; queued again (it resumes)")


def _embedded_key(settings: Settings) -> str:
    """The key `serve` prints: made once, kept in the data folder (readable by its owner only)."""
    from shared.db.keys import create_api_key, owner_for_key
    from shared.db.session import session_scope

    key_file = settings.data_dir / "api-key"
    with session_scope(settings.database_url) as session:
        if key_file.exists():
            key = key_file.read_text().strip()
            if owner_for_key(session, key):
                return key
        # the one user of the embedded mode: an admin key, so it may make keys for others too
        key = create_api_key(session, owner="local", name="embedded", admin=True)
    key_file.write_text(key + "\n")
    key_file.chmod(0o600)
    return key


@main.command()
@click.option("--host", default=None, help="Default: LORABAKE_API_HOST (127.0.0.1).")
@click.option("--port", type=int, default=None, help="Default: LORABAKE_API_PORT (8000).")
@log_level_option
def serve(host: str | None, port: int | None) -> None:
    """Everything on one machine: database, storage, broker, API and one worker. No servers needed."""
    from api.app import create_app
    from lorabake.serving import EmbeddedWorker, announce_when_ready, run_api
    from shared.catalogue.reporting import report_before_start
    from shared.db.migrate import upgrade
    from shared.jobs.workers import worker_id

    settings = get_settings()
    setup_logging(settings.log_level)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    assert settings.models_dir is not None
    settings.models_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.database_url)
    key = _embedded_key(settings)
    _requeue_interrupted(settings)
    host, port = host or settings.api_host, port or settings.api_port

    env = {**os.environ, "LORABAKE_DATA_DIR": str(settings.data_dir)}
    ready_file = settings.data_dir / "worker.ready"
    ready_file.unlink(missing_ok=True)
    # Its own process group, so stopping serve stops the worker's pool children too.
    worker_proc = subprocess.Popen(
        [sys.executable, "-m", "lorabake.cli", "worker", "--ready-file", str(ready_file)],
        env=env,
        start_new_session=True,
    )
    worker = EmbeddedWorker(worker_proc)
    try:
        # Its worker reports the same as it starts; this one is done before the API answers anything. The
        # box below names the models.
        report_before_start(settings, worker_id(worker_proc.pid), say=False)
        models = ", ".join(sorted(p.name for p in settings.models_dir.iterdir()))
        welcome = [
            f"lorabake is running at http://{host}:{port}",
            f"API docs: http://{host}:{port}/docs",
            f"API key: {key}",
            f"data folder: {settings.data_dir}",
            f"base models in {settings.models_dir}:",
            f"  {models or 'none yet: `lorabake tiny-model` writes a tiny demo model'}",
            "Ctrl-C stops it",
        ]
        run_api(
            create_app(settings),
            host,
            port,
            settings.log_level,
            on_listening=lambda: announce_when_ready(welcome, worker, ready_file),
            on_stop=worker.tell_to_stop,  # both stop at once
            graceful_seconds=3,  # a request still running then (an upload) is cut off: one Ctrl-C stops
        )
    finally:
        worker.stop()
        ready_file.unlink(missing_ok=True)


@main.command()
@click.argument("config_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("dataset_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--models-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where base_model is looked up. Default: LORABAKE_MODELS_DIR.",
)
@click.option("--allow-download", is_flag=True, help="Download a hub base model missing from the HF cache.")
def train(
    config_file: Path, dataset_dir: Path, out_dir: Path, models_dir: Path | None, allow_download: bool
) -> None:
    """Train a LoRA from CONFIG_FILE (JSON) on DATASET_DIR into OUT_DIR, without the service."""
    from pydantic import ValidationError

    from shared.config.presets import apply_preset
    from shared.config.spec import TrainingConfig
    from shared.datasets.images import upright_size
    from shared.datasets.intake import layout_options
    from shared.datasets.layout import scan_dataset_dir
    from shared.errors import LorabakeError
    from worker.training.engine import EngineHooks, Progress, SavedLora, train_lora

    try:
        config = TrainingConfig.model_validate(json.loads(config_file.read_text()))
        # the service applies presets when a job is submitted; here the dataset is first seen now
        layout = scan_dataset_dir(dataset_dir, **layout_options(config))
        sizes = {i.path: upright_size(dataset_dir / i.path) for s in layout.subsets for i in s.images}
        config = apply_preset(config, layout, sizes)
    except (ValidationError, json.JSONDecodeError) as exc:
        raise click.ClickException(f"{config_file}: {exc}") from exc
    except LorabakeError as exc:
        raise click.ClickException(f"{exc.code}: {exc.message}") from exc

    def show_progress(p: Progress) -> None:
        if p.step == p.total_steps or p.step % 10 == 0:
            rate = f"{p.steps_per_second:.2f} it/s" if p.steps_per_second else "-"
            click.echo(
                f"epoch {p.epoch}/{p.total_epochs} step {p.step}/{p.total_steps} "
                f"loss {p.loss if p.loss is not None else '-'} {rate}"
            )

    def show_saved(s: SavedLora) -> None:
        click.echo(f"saved {s.path} (epoch {s.epoch}, step {s.step})")

    hooks = EngineHooks(
        on_stage=lambda s: click.echo(f"[{s}]"), on_progress=show_progress, on_saved=show_saved
    )
    try:
        settings = get_settings()
        result = train_lora(
            config,
            dataset_dir,
            out_dir,
            models_dir=models_dir or settings.models_dir,
            hooks=hooks,
            allow_download=allow_download or settings.allow_model_downloads,
        )
    except LorabakeError as exc:
        raise click.ClickException(f"{exc.code}: {exc.message}") from exc
    click.echo(f"done: {len(result.files)} file(s) in {out_dir}, seed {result.seed}")


@main.command("tiny-model")
@click.argument("name", default="tiny-sd15")
@click.option(
    "--with-captioners",
    is_flag=True,
    help="Also write tiny captioners: tiny-blip, tiny-wd14, tiny-florence2, tiny-qwen2.5-vl, "
    "tiny-joycaption.",
)
@click.option(
    "--family",
    type=click.Choice(["sd1", "flux1-dev", "flux1-schnell", "chroma"]),
    default="sd1",
    show_default=True,
    help="The shape: SD1.5, FLUX.1 dev / schnell (T5 + CLIP-L, 16-channel VAE, flow matching), or Chroma "
    "(FLUX.1's blocks and VAE with T5 alone).",
)
def tiny_model(name: str, with_captioners: bool, family: str) -> None:
    """Write a tiny random model (SD1.5-shaped, or FLUX.1 / Chroma-shaped with --family) into the models
    folder, to try the service without a GPU (its LoRAs and samples are noise: it shows the flow, not
    quality)."""
    settings = get_settings()
    assert settings.models_dir is not None
    if family.startswith("flux1"):
        from worker.devtools.tiny_flux import save_tiny_flux

        target = save_tiny_flux(settings.models_dir / name, guidance_embeds=family == "flux1-dev")
    elif family == "chroma":
        from worker.devtools.tiny_flux import save_tiny_chroma

        target = save_tiny_chroma(settings.models_dir / name)
    else:
        from worker.devtools.tiny_models import save_tiny_sd15

        target = save_tiny_sd15(settings.models_dir / name)
    click.echo(f'wrote {target}; use "base_model": "{name}"')
    if with_captioners:
        from worker.devtools.tiny_captioners import (
            save_tiny_blip,
            save_tiny_florence2,
            save_tiny_joycaption,
            save_tiny_qwen2_5_vl,
            save_tiny_wd14,
        )

        save_tiny_blip(settings.models_dir / "tiny-blip")
        save_tiny_wd14(settings.models_dir / "tiny-wd14")
        click.echo('wrote tiny-blip and tiny-wd14 ("blip_model": "tiny-blip", "wd14_model": "tiny-wd14")')
        save_tiny_florence2(settings.models_dir / "tiny-florence2")
        save_tiny_qwen2_5_vl(settings.models_dir / "tiny-qwen2.5-vl")
        save_tiny_joycaption(settings.models_dir / "tiny-joycaption")
        click.echo(
            'wrote tiny-florence2, tiny-qwen2.5-vl and tiny-joycaption ("florence2_model": "tiny-florence2", '
            '"qwen_vl_model": "tiny-qwen2.5-vl", "joycaption_model": "tiny-joycaption")'
        )


# Talking to a server: submit, watch, download, jobs, cancel (lorabake/remote_commands.py).
for _command in remote_commands.COMMANDS:
    main.add_command(_command)


if __name__ == "__main__":
    main()
