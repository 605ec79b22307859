"""`lorabake submit | watch | caption | download | jobs | cancel | webhooks`: a lorabake server from a
terminal, through lorabake.client. On a terminal they draw rich progress bars and tables; piped, they print
plain lines.

Exit codes: 0 done (a watched job succeeded), 1 an error (or the watched job failed), 2 bad usage,
3 the watched job was canceled, 130 stopped with Ctrl-C (the job goes on).
"""

from __future__ import annotations

import functools
import json
import re
import sys
import threading
import time
import tomllib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from itertools import islice
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from lorabake.client import Artifact as ArtifactModel
from lorabake.client import (
    ChecksumMismatchError,
    DownloadResult,
    Event,
    Job,
    LorabakeAPIError,
    LorabakeClient,
    LorabakeClientError,
    LorabakeConnectionError,
    WebhookDelivery,
)
from lorabake.client import Progress as JobProgress

F = TypeVar("F", bound=Callable[..., Any])
EXIT_FAILED, EXIT_CANCELED, EXIT_INTERRUPTED = 1, 3, 130
PLAIN_PROGRESS_EVERY = 5.0  # seconds between plain progress lines (an epoch's start and the end always print)
QUEUE_REFRESH_SECONDS = 5.0  # how often `watch` asks a queued job's place in line again
_OBJECT_ID = re.compile(r"[0-9a-f]{32}")
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


# --- the server, and errors as one line ------------------------------------------------------------------


def remote_options(command: F) -> F:
    command = click.option(
        "--key", envvar="LORABAKE_API_KEY", default=None, help="API key. Default: LORABAKE_API_KEY."
    )(command)
    return click.option(
        "--url",
        envvar="LORABAKE_URL",
        default="http://127.0.0.1:8000",
        show_default=True,
        help="The server. Default: LORABAKE_URL.",
    )(command)


def local_key(url: str) -> str | None:
    """The key `lorabake serve` keeps in its data folder, for a server on this machine only: a key of the
    local data folder is never sent anywhere else."""
    if urlsplit(url).hostname not in _LOOPBACK:
        return None
    try:
        from shared.settings import get_settings

        key_file = get_settings().data_dir / "api-key"
        return key_file.read_text().strip() or None if key_file.is_file() else None
    except Exception:  # unreadable settings or file: the server will say the key is missing
        return None


def one_line(exc: LorabakeClientError) -> str:
    if isinstance(exc, LorabakeAPIError):
        retry = f"; retry in {exc.retry_after:g}s" if exc.retry_after is not None else ""
        return f"{exc.code}: {exc.message} (HTTP {exc.status}{retry})"
    if isinstance(exc, LorabakeConnectionError):
        return f"{exc}. Is the server running? Set --url or LORABAKE_URL."
    return str(exc)


@contextmanager
def connected(url: str, key: str | None) -> Iterator[LorabakeClient]:
    """A client of the server; each client error leaves as one line (click's `Error: ...`), no traceback."""
    try:
        with LorabakeClient(url, key or local_key(url), retries=3) as client:
            yield client
    except LorabakeClientError as exc:
        raise click.ClickException(one_line(exc)) from exc
    except KeyboardInterrupt:
        click.echo("\nstopped (a job on the server goes on; `lorabake cancel JOB` stops it)", err=True)
        sys.exit(EXIT_INTERRUPTED)


def console() -> Console:
    return Console(highlight=False)


# --- submit ------------------------------------------------------------------------------------------------


def load_config(path: Path) -> dict[str, Any]:
    """A config file: JSON, TOML (`.toml`) or YAML (`.yaml`/`.yml`, when PyYAML is installed)."""
    text = path.read_text()
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            config: object = tomllib.loads(text)
        elif suffix in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError as exc:
                raise click.ClickException(f"{path}: YAML needs PyYAML (pip install pyyaml)") from exc
            config = yaml.safe_load(text)
        else:
            config = json.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError, ValueError) as exc:
        raise click.ClickException(f"{path}: {exc}") from exc
    if not isinstance(config, dict):
        raise click.ClickException(f"{path}: a config is a mapping of fields (e.g. a JSON object)")
    return config


def plan_summary(job: Job) -> str:
    plan = job.plan
    saved = plan.get("saved_epochs") or []
    text = (
        f"{plan.get('images', '?')} images, {plan.get('epochs', '?')} epochs, "
        f"{plan.get('total_steps', '?')} steps"
    )
    if saved:
        text += f"; saves epochs {', '.join(str(e) for e in saved)}"
    warnings = [w.get("code", "?") for w in plan.get("warnings", []) if isinstance(w, dict)]
    return text + (f"; warnings: {', '.join(warnings)}" if warnings else "")


def event_list(text: str | None) -> list[str] | None:
    """`--webhook-events a,b`: the event types, or None (all of them) when not given."""
    if text is None:
        return None
    return [e.strip() for e in text.split(",") if e.strip()]


@click.command()
@click.argument("dataset")
@click.option(
    "--config",
    "config_file",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Training config: JSON, TOML or YAML, in Kohya's vocabulary.",
)
@click.option("--preset", default=None, help="Fill the fields the config leaves out: character, style...")
@click.option(
    "--direct",
    is_flag=True,
    help="Send the zip straight to storage (POST /v1/uploads) instead of in the submission.",
)
@click.option(
    "--webhook",
    "webhook_url",
    default=None,
    metavar="URL",
    help="A URL that receives this job's events, signed with your default webhook secret.",
)
@click.option(
    "--webhook-events",
    default=None,
    metavar="A,B",
    help="The events --webhook receives (default: all): job.status, job.stage, job.progress, "
    "job.artifact, job.succeeded, job.failed, job.canceled.",
)
@click.option(
    "--idempotency-key",
    default=None,
    metavar="KEY",
    help="Send this Idempotency-Key (default: a new UUID, reused on the command's own retries): running "
    "the command again with the same KEY and inputs within 24 h prints the same job instead of a second.",
)
@click.option("--watch", "follow_job", is_flag=True, help="Then follow it as `lorabake watch` does.")
@remote_options
def submit(
    dataset: str,
    config_file: Path,
    preset: str | None,
    direct: bool,
    webhook_url: str | None,
    webhook_events: str | None,
    idempotency_key: str | None,
    follow_job: bool,
    url: str,
    key: str | None,
) -> None:
    """Queue a training job on DATASET: a zip, a folder (zipped on the fly), a stored dataset's id, or an
    http(s) URL of a zip that the server fetches. Prints the job's id."""
    config = load_config(config_file)
    if webhook_events is not None and not webhook_url:
        raise click.UsageError("--webhook-events needs --webhook")
    if idempotency_key is not None and direct:  # each run makes a new upload, so a rerun is another request
        raise click.UsageError("--idempotency-key cannot be used with --direct")
    hook: dict[str, Any] = {
        "webhook": webhook_url or None,
        "webhook_events": event_list(webhook_events),
        "idempotency_key": idempotency_key,
    }
    path = Path(dataset).expanduser()
    remote = urlsplit(dataset).scheme in ("http", "https")
    if direct and (remote or not path.exists()):
        raise click.UsageError("--direct sends a zip or folder of this machine; DATASET is not one")
    with connected(url, key) as client:
        if remote:
            job = client.submit_job(config, dataset_url=dataset, preset=preset, **hook)
        elif path.exists() and direct:
            upload_id = client.upload_direct(path)
            click.echo(f"uploaded {path.name} straight to storage: upload {upload_id}", err=True)
            job = client.submit_job(config, upload_id=upload_id, preset=preset, **hook)
        elif path.exists():
            job = client.submit_job(config, dataset=path, preset=preset, **hook)
        elif _OBJECT_ID.fullmatch(dataset):
            job = client.submit_job(config, dataset_id=dataset, preset=preset, **hook)
        else:
            raise click.ClickException(f"{dataset}: no such zip file or folder (nor a dataset id or URL)")
        click.echo(job.id)
        click.echo(f"queued: {plan_summary(job)}", err=True)
        if follow_job:
            sys.exit(follow(client, job.id))


# --- watch -------------------------------------------------------------------------------------------------


def _size(n: float) -> str:
    if n < 1024:
        return f"{n:.0f} B"
    for unit in ("KiB", "MiB"):
        n /= 1024
        if n < 1024:
            return f"{n:.1f} {unit}"
    return f"{n / 1024:.1f} GiB"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def _loss(p: JobProgress) -> str:
    return f"{p.loss:.4f}" if p.loss is not None else "-"


def _rate(p: JobProgress) -> str:
    return f"{p.steps_per_second:.2f} it/s" if p.steps_per_second else "- it/s"


def standing_line(job: Job) -> str | None:
    """`queued: position 2, starts in ~1m05s` for a queued job (None once it has started)."""
    if job.status != "queued" or job.queue_position is None:
        return None
    when = job.estimated_start_seconds
    start = "no start estimate yet" if when is None else f"starts in ~{_duration(when)}"
    return f"queued: position {job.queue_position}, {start}"


def saved_line(data: dict[str, Any]) -> str:
    where = ", ".join(f"{k} {data[k]}" for k in ("epoch", "step") if data.get(k) is not None)
    size = f", {_size(int(data['size_bytes']))}" if isinstance(data.get("size_bytes"), int) else ""
    return f"saved {data.get('name', '?')} ({data.get('kind', 'file')}{', ' + where if where else ''}{size})"


class WatchView:
    """Shows a job's events: a live bar on a terminal, else a plain line per change (progress throttled)."""

    def __init__(self, out: Console, job: Job) -> None:
        self.out = out
        self.live = out.is_terminal
        self.state = job.status
        self.epoch = job.progress.epoch
        self.total = job.progress.total_steps or int(job.plan.get("total_steps") or 0) or None
        self._last_plain = 0.0
        self._bar: Progress | None = None
        self._task: TaskID | None = None
        self.standing = standing_line(job)  # while queued: its place in line, as a line of text
        self.position = job.queue_position if self.standing else None
        self._shown_position: int | None = None  # the position plain output printed last
        self._lock = threading.Lock()  # the queue ticker's thread updates the view too

    def __enter__(self) -> WatchView:
        if self.live:
            self._bar = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("epoch {task.fields[epoch]}"),
                TextColumn("loss {task.fields[loss]}"),
                TextColumn("{task.fields[rate]}"),
                TextColumn("ETA {task.fields[eta]}"),
                console=self.out,
                transient=False,
            )
            self._bar.start()
            self._task = self._bar.add_task(
                self._label(), total=self.total, epoch="-", loss="-", rate="-", eta="-"
            )
        return self

    def _label(self) -> str:
        return self.standing if self.state == "queued" and self.standing else self.state

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()

    def note(self, text: str) -> None:
        if self._bar is not None:
            self._bar.console.print(text, markup=False)
        else:
            click.echo(text)

    def reconnecting(self, attempt: int, error: Exception | None) -> None:
        self.note(f"stream dropped ({error or 'closed'}); reconnecting (attempt {attempt})")

    def handle(self, event: Event) -> None:
        with self._lock:
            self._handle(event)

    def _handle(self, event: Event) -> None:
        data = event.data
        if event.type == "status":
            self.state = str(data.get("status", self.state))
            if self.state != "queued":
                self.standing = self.position = None  # (a job queued again gets a fresh look)
            self._describe(self._label())
            if not self.live:
                self.note(f"status: {self.state}")
                if self.standing:
                    self.note(self.standing)
                    self._shown_position = self.position
        elif event.type == "stage":
            self._describe(f"{self.state}: {data.get('stage', '')}")
            if not self.live:
                self.note(f"stage: {data.get('stage', '')}")
        elif event.type == "progress":
            self.show_progress(event.progress())
        elif event.type == "artifact":
            self.note(saved_line(data))
        elif event.type == "artifact_removed":
            self.note(f"removed {data.get('name', '?')} (only the last ones are kept)")
        elif event.type == "cancel_requested":
            self.note("cancel requested: it stops after the current step")

    def queue_standing(self, job: Job) -> None:
        """A fresh look at the queued job: the bar shows its place in line; plain output prints it again
        when the position changes."""
        with self._lock:
            line = standing_line(job)
            if self.state != "queued" or line is None:
                return
            self.standing, self.position = line, job.queue_position
            self._describe(line)
            if not self.live and self.position != self._shown_position:
                self._shown_position = self.position
                self.note(line)

    def _describe(self, text: str) -> None:
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, description=text)

    def show_progress(self, p: JobProgress) -> None:
        epoch = f"{p.epoch}/{p.total_epochs}" if p.total_epochs else str(p.epoch)
        if self._bar is not None and self._task is not None:
            self._bar.update(
                self._task,
                completed=p.step,
                total=p.total_steps or self.total,
                epoch=epoch,
                loss=_loss(p),
                rate=_rate(p),
                eta=_duration(p.eta_seconds),
            )
            return
        now = time.monotonic()
        if p.epoch != self.epoch or p.step == p.total_steps or now - self._last_plain >= PLAIN_PROGRESS_EVERY:
            self.epoch, self._last_plain = p.epoch, now
            self.note(
                f"step {p.step}/{p.total_steps}  epoch {epoch}  loss {_loss(p)}  {_rate(p)}  "
                f"ETA {_duration(p.eta_seconds)}"
            )


@contextmanager
def queue_ticker(client: LorabakeClient, job_id: str, view: WatchView) -> Iterator[None]:
    """While the job is queued, asks its place in line every QUEUE_REFRESH_SECONDS (the event stream says
    nothing while a job waits), in a thread beside the stream."""
    stop = threading.Event()

    def tick() -> None:
        while not stop.wait(QUEUE_REFRESH_SECONDS):
            if view.state != "queued":
                continue
            try:
                view.queue_standing(client.get_job(job_id))
            except Exception:  # noqa: BLE001 - the stream reports what matters; this is a nicety
                continue

    thread = threading.Thread(target=tick, name="queue-ticker", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=2 * QUEUE_REFRESH_SECONDS)


def follow(client: LorabakeClient, job_id: str) -> int:
    """Shows the job until it ends; the exit code says how it ended."""
    out = console()
    with WatchView(out, client.get_job(job_id)) as view, queue_ticker(client, job_id, view):
        for event in client.events(job_id, on_reconnect=view.reconnecting):
            view.handle(event)
    job = client.get_job(job_id)
    loras = sum(1 for a in job.artifacts if a.kind == "lora")
    samples = sum(1 for a in job.artifacts if a.kind == "sample")
    files = f"{loras} LoRA file(s), {samples} sample(s)"
    took = ""
    if job.started_at and job.finished_at:
        took = f" in {_duration((job.finished_at - job.started_at).total_seconds())}"
    if job.status == "succeeded" and job.kind == "caption":
        click.echo(
            f"job {job.id} succeeded{took}: caption revision {job.caption_revision} "
            f"of dataset {job.dataset_id}"
        )
        return 0
    if job.status == "succeeded":
        click.echo(f"job {job.id} succeeded{took}: {files}; `lorabake download {job.id} --all` fetches them")
        return 0
    if job.status == "canceled":
        click.echo(f"Error: job {job.id} was canceled: {files} saved before it stopped", err=True)
        return EXIT_CANCELED
    error = f"{job.error.code}: {job.error.message}" if job.error else "no error recorded"
    click.echo(f"Error: job {job.id} {job.status}: {error}", err=True)
    return EXIT_FAILED


@click.command()
@click.argument("job_id")
@remote_options
def watch(job_id: str, url: str, key: str | None) -> None:
    """Follow a job live: step, epoch, loss, it/s, ETA, and each file as it is saved. Exits 0 when it
    succeeds, 1 when it fails, 3 when it is canceled."""
    with connected(url, key) as client:
        code = follow(client, job_id)
    sys.exit(code)


# --- caption -----------------------------------------------------------------------------------------------

CAPTION_METHODS = ("blip", "wd14", "florence2", "qwen_vl", "joycaption", "auto")
# the config field that names each method's model (shared/config/captioning.py's MODEL_FIELD)
CAPTION_MODEL_FIELD = {m: f"{m}_model" for m in CAPTION_METHODS if m != "auto"}


def caption_options(pairs: tuple[str, ...]) -> dict[str, Any]:
    """`key=value` pairs as CaptionConfig fields: a value that reads as JSON (`2`, `true`, `["a", "b"]`,
    `null`) is that value, anything else is the text as written (`florence2_task=<CAPTION>`)."""
    options: dict[str, Any] = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        name = name.strip()
        if not sep or not name:
            raise click.BadParameter(f"{pair!r} is not key=value", param_hint="--option")
        try:
            options[name] = json.loads(text)
        except json.JSONDecodeError:
            options[name] = text
    return options


@click.command()
@click.argument("dataset_id")
@click.option(
    "--method",
    required=True,
    type=click.Choice(CAPTION_METHODS),
    help="blip (sentences), wd14 (tags), florence2 / qwen_vl / joycaption (vision-language models), or "
    "auto (the --family's captioner).",
)
@click.option(
    "--model", default=None, metavar="NAME", help="The method's model: a models-folder name or hub id."
)
@click.option(
    "--family",
    "model_family",
    default=None,
    metavar="FAMILY",
    help="--method auto: the base model family the captions are for (sd1, sdxl, flux1, ...).",
)
@click.option(
    "--option",
    "-o",
    "options",
    multiple=True,
    metavar="KEY=VALUE",
    help="Any caption option (docs/datasets.md), repeatable: existing=overwrite, florence2_task=<CAPTION>, "
    "trigger_placement=first, caption_length=long, batch_size=2 ...",
)
@click.option("--watch", "follow_job", is_flag=True, help="Then follow it as `lorabake watch` does.")
@remote_options
def caption(
    dataset_id: str,
    method: str,
    model: str | None,
    model_family: str | None,
    options: tuple[str, ...],
    follow_job: bool,
    url: str,
    key: str | None,
) -> None:
    """Caption a stored dataset's images with a caption job: its result is the dataset's next caption
    revision. Prints the job's id."""
    config: dict[str, Any] = {**caption_options(options), "method": method}
    if model is not None:
        if method == "auto":
            raise click.UsageError("--model needs a named --method (auto chooses its own model)")
        config[CAPTION_MODEL_FIELD[method]] = model
    if model_family is not None:
        config["model_family"] = model_family
    with connected(url, key) as client:
        job = client.caption_dataset(dataset_id, config)
        click.echo(job.id)
        # the job's config holds what runs: for `auto`, the method the family chose
        chosen = str(job.config.get("method") or method)
        chosen_model = job.config.get(CAPTION_MODEL_FIELD.get(chosen, ""))
        if chosen_model:
            chosen = f"{chosen} ({chosen_model})"
        click.echo(f"queued: captioning with {chosen}", err=True)
        if follow_job:
            sys.exit(follow(client, job.id))


# --- download ----------------------------------------------------------------------------------------------


def select_artifacts(
    artifacts: list[ArtifactModel], epoch: int | None, everything: bool, samples: bool
) -> list[ArtifactModel]:
    """The files to fetch: the final LoRA (else the latest), the LoRA of one `epoch`, or every file
    (`everything`); samples only when asked for, those of the chosen epochs."""
    loras = [a for a in artifacts if a.kind == "lora"]
    if everything:
        chosen = [a for a in artifacts if a.kind != "sample"]
    elif epoch is not None:
        chosen = [a for a in loras if a.epoch == epoch]
        if not chosen:
            have = sorted({a.epoch for a in loras if a.epoch is not None})
            raise click.ClickException(
                f"no LoRA file of epoch {epoch}; saved epochs: {', '.join(map(str, have)) or 'none yet'}"
            )
    else:
        chosen = [a for a in loras if a.is_final] or sorted(loras, key=lambda a: a.step or 0)[-1:]
    if samples:
        epochs = {a.epoch for a in chosen}
        chosen += [a for a in artifacts if a.kind == "sample" and (everything or a.epoch in epochs)]
    return chosen


def result_line(result: DownloadResult) -> str:
    name, size = result.path.name, _size(result.size)
    if result.skipped:
        return f"{name} is already here ({size}, sha256 ok)"
    if result.resumed_from:
        return f"downloaded {name} ({size}, resumed at {_size(result.resumed_from)}, sha256 ok)"
    return f"downloaded {name} ({size}, sha256 ok)"


def fetch_all(client: LorabakeClient, chosen: list[ArtifactModel], out_dir: Path, out: Console) -> int:
    """Downloads each file in turn; returns how many failed (each says why on its own line)."""
    failed = 0
    bar = (
        Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=out,
        )
        if out.is_terminal
        else None
    )

    def say(text: str, err: bool = False) -> None:
        if bar is not None:
            bar.console.print(text, markup=False)
        else:
            click.echo(text, err=err)

    if bar is not None:
        bar.start()
    try:
        for artifact in chosen:
            hook = None
            if bar is not None:
                task = bar.add_task(artifact.name, total=artifact.size_bytes)
                hook = functools.partial(_advance, bar, task)
            try:
                say(result_line(client.download_artifact(artifact, out_dir, on_progress=hook)))
            except (ChecksumMismatchError, LorabakeConnectionError) as exc:
                failed += 1
                say(f"Error: {one_line(exc)}", err=True)
    finally:
        if bar is not None:
            bar.stop()
    return failed


def _advance(bar: Progress, task: TaskID, done: int, total: int) -> None:
    bar.update(task, completed=done, total=total)


@click.command()
@click.argument("job_id")
@click.option("--epoch", type=int, default=None, help="The LoRA file of this epoch.")
@click.option("--all", "everything", is_flag=True, help="Every LoRA file (and other files) of the job.")
@click.option("--samples", is_flag=True, help="Also the sample images (of the chosen epochs).")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
    help="The folder to save into.",
)
@remote_options
def download(
    job_id: str, epoch: int | None, everything: bool, samples: bool, out_dir: Path, url: str, key: str | None
) -> None:
    """Download a job's files (default: the final LoRA) with their sha256 checked. An interrupted download
    resumes from its `.part` file where the storage allows; files already here are not fetched again."""
    if epoch is not None and everything:
        raise click.UsageError("give --epoch N or --all, not both")
    with connected(url, key) as client:
        chosen = select_artifacts(client.list_artifacts(job_id), epoch, everything, samples)
        if not chosen:
            raise click.ClickException(f"job {job_id} has no files to download yet")
        out_dir.mkdir(parents=True, exist_ok=True)
        failed = fetch_all(client, chosen, out_dir, console())
    if failed:
        raise click.ClickException(f"{failed} of {len(chosen)} file(s) failed; run it again to retry")
    click.echo(f"{len(chosen)} file(s) in {out_dir}")


# --- jobs, cancel ------------------------------------------------------------------------------------------


def job_row(job: Job) -> list[str]:
    p = job.progress
    created = job.created_at.astimezone().strftime("%Y-%m-%d %H:%M:%S") if job.created_at else "-"
    return [
        job.id,
        job.kind,
        job.status,
        f"{p.step}/{p.total_steps}" if p.total_steps else "-",
        f"{p.epoch}/{p.total_epochs}" if p.total_epochs else "-",
        _loss(p),
        str(len(job.artifacts)),
        str(job.config.get("output_name") or ""),
        created,
    ]


def print_table(columns: list[str], rows: list[list[str]]) -> None:
    """A rich table on a terminal; aligned plain columns otherwise, for grep and awk."""
    out = console()
    if out.is_terminal:
        table = Table(*columns, box=None, header_style="bold")
        for row in rows:
            table.add_row(*row)
        out.print(table)
        return
    widths = [max([len(c), *(len(r[i]) for r in rows)]) for i, c in enumerate(columns)]
    for row in [columns, *rows]:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


JOB_COLUMNS = ["ID", "KIND", "STATUS", "STEP", "EPOCH", "LOSS", "FILES", "NAME", "CREATED"]


@click.command("jobs")
@click.option("--status", default=None, help="Only jobs in this status (queued, training, succeeded...).")
@click.option(
    "--limit", type=click.IntRange(min=1), default=20, show_default=True, help="How many, newest first."
)
@remote_options
def list_jobs(status: str | None, limit: int, url: str, key: str | None) -> None:
    """Your jobs, newest first."""
    with connected(url, key) as client:
        jobs = list(islice(client.iter_jobs(status=status, page_size=min(limit, 100)), limit))
    print_table(JOB_COLUMNS, [job_row(j) for j in jobs])
    if not jobs:
        click.echo("no jobs" + (f" with status {status}" if status else ""), err=True)


@click.command()
@click.argument("job_id")
@remote_options
def cancel(job_id: str, url: str, key: str | None) -> None:
    """Cancel a job: a queued one at once, a running one after its current step (saved epochs stay)."""
    with connected(url, key) as client:
        job = client.cancel_job(job_id)
    if job.status == "canceled":
        click.echo(f"job {job.id} canceled")
    else:
        click.echo(f"job {job.id}: cancel requested; it stops after the current step (now {job.status})")


# --- webhooks ------------------------------------------------------------------------------------------


@click.group()
def webhooks() -> None:
    """Endpoints that receive your jobs' events (signed, Standard Webhooks), and their delivery logs."""


def _when(value: datetime | None) -> str:
    return value.astimezone().strftime("%Y-%m-%d %H:%M:%S") if value else "-"


@webhooks.command("list")
@click.option("--job", "job_id", default=None, help="That job's own --webhook instead of your endpoints.")
@remote_options
def list_webhooks(job_id: str | None, url: str, key: str | None) -> None:
    """Your registered endpoints (or a job's own webhook)."""
    with connected(url, key) as client:
        hooks = client.list_webhooks(job_id=job_id)
    rows = [
        [h.id, h.kind, ",".join(h.events) or "all", h.url, h.description, _when(h.created_at)] for h in hooks
    ]
    print_table(["ID", "KIND", "EVENTS", "URL", "DESCRIPTION", "CREATED"], rows)
    if not hooks:
        click.echo("no webhooks", err=True)


@webhooks.command("create")
@click.argument("endpoint_url", metavar="URL")
@click.option("--events", default=None, metavar="A,B", help="Only these event types (default: all).")
@click.option("--description", default="", help="A note to recognize it by.")
@remote_options
def create_webhook(
    endpoint_url: str, events: str | None, description: str, url: str, key: str | None
) -> None:
    """Register URL for every event of your jobs. Prints its id, then its secret (`whsec_...`), which
    verifies the signatures; `lorabake webhooks secret ID` shows it again."""
    with connected(url, key) as client:
        created = client.create_webhook(endpoint_url, event_list(events), description)
    click.echo(created.id)
    click.echo(created.secret)


@webhooks.command("delete")
@click.argument("webhook_id")
@remote_options
def delete_webhook(webhook_id: str, url: str, key: str | None) -> None:
    """Stop sending to an endpoint (deliveries not made yet are dropped)."""
    with connected(url, key) as client:
        client.delete_webhook(webhook_id)
    click.echo(f"webhook {webhook_id} deleted")


@webhooks.command("secret")
@click.argument("webhook_id", required=False)
@click.option("--rotate", is_flag=True, help="Make a new one; the old one also signs for 24 hours.")
@remote_options
def webhook_secret(webhook_id: str | None, rotate: bool, url: str, key: str | None) -> None:
    """An endpoint's signing secret, or without WEBHOOK_ID your default one (it signs jobs' --webhook)."""
    with connected(url, key) as client:
        if webhook_id is None:
            secret = client.rotate_default_webhook_secret() if rotate else client.get_default_webhook_secret()
        elif rotate:
            secret = client.rotate_webhook_secret(webhook_id)
        else:
            secret = client.get_webhook_secret(webhook_id)
    click.echo(secret.secret)
    if secret.previous_secret_valid_until:
        click.echo(
            f"the previous secret also signs until {_when(secret.previous_secret_valid_until)}", err=True
        )


def delivery_row(d: WebhookDelivery) -> list[str]:
    last = d.attempts[-1] if d.attempts else None
    answer = "-" if last is None else str(last.status_code or last.error or "-")
    return [
        d.id,
        d.event_type,
        d.job_id or "-",
        d.status,
        str(len(d.attempts)),
        answer[:40],
        _when(d.created_at),
    ]


@webhooks.command("deliveries")
@click.argument("webhook_id")
@click.option("--status", type=click.Choice(["pending", "delivered", "failed"]), default=None)
@click.option(
    "--limit", type=click.IntRange(min=1), default=20, show_default=True, help="How many, newest first."
)
@remote_options
def webhook_deliveries(webhook_id: str, status: str | None, limit: int, url: str, key: str | None) -> None:
    """An endpoint's delivery log, newest first: each event, its status, attempts and the last answer."""
    with connected(url, key) as client:
        pages = client.iter_webhook_deliveries(webhook_id, status=status, page_size=min(limit, 100))
        deliveries = list(islice(pages, limit))
    print_table(
        ["ID", "EVENT", "JOB", "STATUS", "ATTEMPTS", "LAST ANSWER", "CREATED"],
        [delivery_row(d) for d in deliveries],
    )
    if not deliveries:
        click.echo("no deliveries" + (f" with status {status}" if status else ""), err=True)


@webhooks.command("redeliver")
@click.argument("webhook_id")
@click.argument("delivery_id")
@remote_options
def redeliver(webhook_id: str, delivery_id: str, url: str, key: str | None) -> None:
    """Send one delivery again now, with the same webhook-id."""
    with connected(url, key) as client:
        delivery = client.redeliver_webhook(webhook_id, delivery_id)
    click.echo(f"delivery {delivery.id} ({delivery.event_type}) is being sent again")


COMMANDS = [submit, watch, caption, download, list_jobs, cancel, webhooks]
