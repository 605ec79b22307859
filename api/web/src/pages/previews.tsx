// A training job's "Compare epochs" (POST /v1/jobs/{id}/comparisons: a grid of saved epochs x LoRA weights)
// and "Preview" (POST /v1/generations: one image from a prompt with <lora:NAME:WEIGHT> tags) sections, each
// following the job it starts from the event stream, with its own cancel button.
import { useEffect, useRef, useState } from "preact/hooks";
import { api, ApiError, type Artifact, asApiError, downloadFile, fetchBlob, formatDuration, formatTime, type Job, TERMINAL, unwrap } from "../api";
import { AuthImage, ErrorNote, ProgressBar, Section, StatusBadge } from "../components";
import { type Followed, useFollowedJob } from "../follow";
import { href } from "../router";

type Dict = Record<string, unknown>;
const DEFAULT_WEIGHTS = "0, 0.5, 0.75, 1";
const MIN_CELL_PX = 56; // a grid cell (and its column label) is never drawn narrower

// ---------------------------------------------------------------- what a training job offers

/** The job's epoch files (`NAME-000001.safetensors` ... `NAME.safetensors`), by epoch: what a comparison compares. */
export function epochFiles(job: Job, artifacts: Artifact[]): Map<number, Artifact> {
  const name = String((job.config as Dict)["output_name"] ?? "lora");
  const files = new Map<number, Artifact>();
  for (const a of artifacts) {
    if (a.kind !== "lora" || a.epoch === null) continue;
    const isEpochFile =
      (a.is_final && a.name === `${name}.safetensors`) ||
      a.name === `${name}-${String(a.epoch).padStart(6, "0")}.safetensors`;
    if (isEpochFile) files.set(a.epoch, a);
  }
  return new Map([...files.entries()].sort((x, y) => x[0] - y[0]));
}

/** The job's first training folder's `trigger class` (else its config's trigger/class words). */
function triggerClass(job: Job): string {
  const subsets = ((job.plan as Dict)["subsets"] ?? []) as Dict[];
  for (const s of subsets) {
    const words = [s["trigger"], s["class_token"]].filter((w) => typeof w === "string" && w) as string[];
    if (!s["is_reg"] && words.length) return words.join(" ");
  }
  const config = job.config as Dict;
  const words = [config["trigger_word"], config["class_word"]].filter((w) => typeof w === "string" && w) as string[];
  return words.join(" ");
}

/** The prompts a comparison uses when given none: the job's sample prompts, else `trigger class`. */
function defaultPrompts(job: Job): string {
  const raw = (job.config as Dict)["sample_prompts"];
  const lines = (Array.isArray(raw) ? raw.map(String) : typeof raw === "string" ? raw.split("\n") : [])
    .map((l) => l.trim())
    .filter((l) => l && !l.startsWith("#"));
  if (lines.length) return lines.join("\n");
  return triggerClass(job) || String((job.config as Dict)["output_name"] ?? "lora");
}

function fileStem(a: Artifact): string {
  return a.name.replace(/\.safetensors$/, "");
}

// ---------------------------------------------------------------- errors next to their fields

type FieldErrors = { byField: Record<string, string>; rest: ApiError | null };

/** A 422's fields (details.field, or details.fields[]) mapped onto the form's own fields, in words. */
function fieldErrors(error: unknown, known: readonly string[], words: (e: ApiError) => string): FieldErrors {
  if (!error) return { byField: {}, rest: null };
  const e = asApiError(error);
  const target = (path: string): string | null => {
    const parts = path.split(".").reverse();
    for (const part of parts) if (known.includes(part)) return part;
    return null;
  };
  const byField: Record<string, string> = {};
  const fields = e.details["fields"];
  let unplaced = false;
  if (Array.isArray(fields)) {
    for (const f of fields as { field?: string; message?: string }[]) {
      const key = target(String(f.field ?? ""));
      const text = `${f.field}: ${f.message ?? "invalid"}`;
      if (key) byField[key] = byField[key] ? `${byField[key]}; ${text}` : text;
      else unplaced = true;
    }
  } else if (typeof e.details["field"] === "string") {
    const key = target(e.details["field"]);
    if (key) byField[key] = words(e);
    else unplaced = true;
  } else {
    unplaced = true;
  }
  return { byField, rest: unplaced ? e : null };
}

function generationWords(e: ApiError): string {
  const d = e.details;
  if (e.code === "unknown_lora") {
    return `No LoRA file named “${String(d["name"])}” among your jobs' files (in ${String(d["tag"])}). NAME is a file name from a job's Files list, without .safetensors.`;
  }
  if (e.code === "lora_family_mismatch") {
    return `“${String(d["name"])}” was trained for ${String(d["lora_family"])}, but this base model is ${String(d["base_model_family"])}: it cannot be applied to it.`;
  }
  return e.message;
}

function FieldError({ id, text }: { id: string; text: string | undefined }) {
  if (!text) return null;
  return (
    <p class="field-error" id={id} role="alert">
      {text}
    </p>
  );
}

/** Props of an input whose error (if any) is shown below it. */
function invalid(id: string, text: string | undefined) {
  return text ? { "aria-invalid": true as const, "aria-describedby": `${id}-error` } : {};
}

function numberOrNull(text: string): number | null {
  const t = text.trim();
  if (!t) return null;
  const n = Number(t);
  return Number.isFinite(n) ? n : Number.NaN;
}

// ---------------------------------------------------------------- the render settings both forms take

type RenderSettings = { seed: string; steps: string; cfg: string; width: string; height: string };
const NO_RENDER_SETTINGS: RenderSettings = { seed: "", steps: "", cfg: "", width: "", height: "" };

/** Puts the filled-in settings into the request body (blank: the API's default); an error naming the field
 * when one is not a number. A comparison takes a list of seeds (`seeds`), a generation one `seed`. */
function addRenderSettings(body: Dict, s: RenderSettings, seedField: "seed" | "seeds"): ApiError | null {
  const numbers: [string, string, string][] = [
    [seedField, s.seed, "seed"],
    ["steps", s.steps, "steps"],
    ["cfg_scale", s.cfg, "CFG scale"],
    ["width", s.width, "width"],
    ["height", s.height, "height"],
  ];
  for (const [field, text, label] of numbers) {
    const n = numberOrNull(text);
    if (Number.isNaN(n)) return new ApiError(0, "invalid_number", `${label} is a number`, { field });
    if (n !== null) body[field] = field === "seeds" ? [n] : n;
  }
  return null;
}

function RenderFields({
  prefix,
  value,
  onChange,
  byField,
  seedField,
  seedPlaceholder,
  sizePlaceholder,
}: {
  prefix: string;
  value: RenderSettings;
  onChange: (value: RenderSettings) => void;
  byField: Record<string, string | undefined>;
  seedField: "seed" | "seeds";
  seedPlaceholder: string;
  sizePlaceholder: string;
}) {
  const size = byField["width"] ?? byField["height"];
  const on = (key: keyof RenderSettings) => (e: { currentTarget: HTMLInputElement }) =>
    onChange({ ...value, [key]: e.currentTarget.value });
  return (
    <>
      <div class="fields compact-fields">
        <div class="field">
          <label for={`${prefix}-seed`}>Seed</label>
          <input id={`${prefix}-seed`} type="number" min={0} placeholder={seedPlaceholder} value={value.seed} onInput={on("seed")} {...invalid(`${prefix}-seed`, byField[seedField])} />
          <FieldError id={`${prefix}-seed-error`} text={byField[seedField]} />
        </div>
        <div class="field">
          <label for={`${prefix}-steps`}>Steps</label>
          <input id={`${prefix}-steps`} type="number" min={1} max={150} placeholder="sample's" value={value.steps} onInput={on("steps")} {...invalid(`${prefix}-steps`, byField["steps"])} />
          <FieldError id={`${prefix}-steps-error`} text={byField["steps"]} />
        </div>
        <div class="field">
          <label for={`${prefix}-cfg`}>CFG scale</label>
          <input id={`${prefix}-cfg`} type="number" min={0} max={30} step={0.5} placeholder="sample's" value={value.cfg} onInput={on("cfg")} {...invalid(`${prefix}-cfg`, byField["cfg_scale"])} />
          <FieldError id={`${prefix}-cfg-error`} text={byField["cfg_scale"]} />
        </div>
        <div class="field">
          <label for={`${prefix}-width`}>Width (px)</label>
          <input id={`${prefix}-width`} type="number" min={64} max={2048} step={8} placeholder={sizePlaceholder} value={value.width} onInput={on("width")} {...invalid(`${prefix}-width`, size)} />
        </div>
        <div class="field">
          <label for={`${prefix}-height`}>Height (px)</label>
          <input id={`${prefix}-height`} type="number" min={64} max={2048} step={8} placeholder={sizePlaceholder} value={value.height} onInput={on("height")} {...invalid(`${prefix}-width`, size)} />
        </div>
      </div>
      <FieldError id={`${prefix}-width-error`} text={size} />
    </>
  );
}

// ---------------------------------------------------------------- a running job's line

function RunningJob({ followed, label, onCancelError }: { followed: Followed; label: string; onCancelError: (e: unknown) => void }) {
  const { job } = followed;
  if (!job) return <p class="muted" aria-live="polite">Loading {label}…</p>;
  const finished = TERMINAL.includes(job.status);
  return (
    <div class="running" aria-live="polite">
      <div class="row">
        <span>
          {label} <a href={href({ page: "job", id: job.id })} class="mono small">{job.id.slice(0, 8)}</a>
        </span>
        <span data-testid={`${label.split(" ")[0]!.toLowerCase()}-status`}>
          <StatusBadge status={job.status} />
        </span>
        <span class="small muted" data-testid={`${label.split(" ")[0]!.toLowerCase()}-progress`}>
          {job.progress.step} / {job.progress.total_steps} denoising steps
          {!finished && job.progress.eta_seconds != null ? ` · ETA ${formatDuration(job.progress.eta_seconds)}` : ""}
          {job.queue_position ? ` · position ${job.queue_position} in the queue` : ""}
        </span>
        {!finished && (
          <button
            type="button"
            class="danger small"
            disabled={job.cancel_requested}
            onClick={async () => {
              onCancelError(null);
              const r = await api.POST("/v1/jobs/{job_id}/cancel", { params: { path: { job_id: job.id } } });
              if (r.error) onCancelError(asApiError(r.error, r.response.status));
              void followed.refresh();
            }}
          >
            {job.cancel_requested ? "Cancel requested…" : `Cancel ${label.toLowerCase()}`}
          </button>
        )}
      </div>
      {!finished && <ProgressBar value={job.progress.step} max={job.progress.total_steps} label={`${label.toLowerCase()} progress`} />}
      {job.error && <ErrorNote error={job.error} />}
    </div>
  );
}

// ---------------------------------------------------------------- comparison grids

type GridMeta = {
  left: number;
  top: number;
  cell_width: number;
  cell_height: number;
  rows: string[];
  columns: string[];
  cells: string[][];
  epochs: number[];
  seeds: number[];
  weights: number[];
  prompt: string;
  prompt_index: number;
};

type Cell = { image: Artifact | null; name: string; epoch: number; weight: number; seed: number; prompt: string };

/** An epoch row's file, downloadable from its row label. */
function RowDownload({ epoch, file, onError }: { epoch: number; file: Artifact; onError: (e: unknown) => void }) {
  const [busy, setBusy] = useState(false);
  return (
    <button
      type="button"
      class="secondary small"
      disabled={busy}
      aria-label={`Download epoch ${epoch} (${file.name})`}
      title={file.name}
      onClick={async () => {
        setBusy(true);
        onError(null);
        try {
          await downloadFile(file.download_url, file.name);
        } catch (e) {
          onError(e);
        } finally {
          setBusy(false);
        }
      }}
    >
      {busy ? "Downloading…" : `Download epoch ${epoch}`}
    </button>
  );
}

/**
 * The grid PNG's cells under the page's own column labels and beside its row labels: the labels drawn into
 * the PNG run together when cells are small, so the image is shown cropped to its cells and each label is
 * a box of its column's (or row's) size that wraps its text. Cells and labels scale together.
 */
function GridView({
  grid,
  images,
  files,
  onOpen,
}: {
  grid: Artifact;
  images: Map<string, Artifact>;
  files: Map<number, Artifact>;
  onOpen: (cell: Cell, opener: HTMLElement) => void;
}) {
  const meta = grid.meta as unknown as GridMeta;
  const [src, setSrc] = useState<string | null>(null);
  const [failed, setFailed] = useState(false);
  const [error, setError] = useState<unknown>(null);
  useEffect(() => {
    let url: string | null = null;
    let live = true;
    fetchBlob(grid.download_url)
      .then((blob) => {
        if (!live) return;
        url = URL.createObjectURL(blob);
        setSrc(url);
      })
      .catch(() => live && setFailed(true));
    return () => {
      live = false;
      if (url) URL.revokeObjectURL(url);
    };
  }, [grid.download_url]);
  const columns = meta.columns.length;
  const rows = meta.rows.length;
  const width = meta.left + meta.cell_width * columns;
  const height = meta.top + meta.cell_height * rows;
  const cellsWidth = meta.cell_width * columns;
  const cellsHeight = meta.cell_height * rows;
  const scale = meta.cell_width < 192 ? Math.min(3, Math.floor(192 / meta.cell_width)) : 1;
  const minWidth = Math.min(cellsWidth * scale, columns * MIN_CELL_PX); // narrower: the grid scrolls
  const pct = (v: number, of: number) => `${(v / of) * 100}%`;
  return (
    <figure class="compare-grid" data-grid={grid.name}>
      <figcaption>
        Prompt {meta.prompt_index + 1}: <q>{meta.prompt}</q>{" "}
        <span class="muted small">
          · rows: epochs, columns: LoRA weights · {width}×{height} px · select a cell to see its image
        </span>
      </figcaption>
      <ErrorNote error={error} />
      <div class="xy-scroll">
        <div class="xy" style={{ gridTemplateColumns: `minmax(7rem, auto) minmax(${minWidth}px, ${cellsWidth * scale}px)` }}>
          <ol class="xy-columns" aria-label="Columns: LoRA weights" style={{ gridTemplateColumns: `repeat(${columns}, minmax(0, 1fr))` }}>
            {meta.columns.map((label) => (
              <li class="xy-label">
                <span>{label}</span>
              </li>
            ))}
          </ol>
          <ol class="xy-rows" aria-label="Rows: epochs" style={{ gridTemplateRows: `repeat(${rows}, minmax(0, 1fr))` }}>
            {meta.rows.map((label, r) => {
              const epoch = meta.epochs[r] ?? 0;
              const file = files.get(epoch);
              return (
                <li class="xy-label">
                  <span>{label}</span>
                  {file && meta.epochs.indexOf(epoch) === r && <RowDownload epoch={epoch} file={file} onError={setError} />}
                </li>
              );
            })}
          </ol>
          <div class="xy-cells" style={{ aspectRatio: `${cellsWidth} / ${cellsHeight}` }}>
            {failed ? (
              <span class="img-missing">grid unavailable</span>
            ) : src ? (
              <img
                src={src}
                alt={`Comparison grid for “${meta.prompt}”: ${meta.rows.join(", ")} by ${meta.columns.join(", ")}`}
                width={width * scale}
                height={height * scale}
                style={{ width: pct(width, cellsWidth), left: pct(-meta.left, cellsWidth), top: pct(-meta.top, cellsHeight) }}
              />
            ) : (
              <span class="img-loading xy-loading" aria-label="loading the grid" />
            )}
            {src &&
              meta.cells.map((row, r) =>
                row.map((name, c) => {
                  const cell: Cell = {
                    image: images.get(name) ?? null,
                    name,
                    epoch: meta.epochs[r] ?? 0,
                    weight: meta.weights[c] ?? 0,
                    seed: meta.seeds[r] ?? 0,
                    prompt: meta.prompt,
                  };
                  return (
                    <button
                      type="button"
                      class="grid-cell"
                      aria-label={`Open epoch ${cell.epoch}, weight ${cell.weight}, seed ${cell.seed}`}
                      style={{ left: pct(c, columns), top: pct(r, rows), width: pct(1, columns), height: pct(1, rows) }}
                      onClick={(e) => onOpen(cell, e.currentTarget)}
                    />
                  );
                }),
              )}
          </div>
        </div>
      </div>
    </figure>
  );
}

function CellDialog({ cell, files, onClose }: { cell: Cell | null; files: Map<number, Artifact>; onClose: () => void }) {
  const ref = useRef<HTMLDialogElement>(null);
  const [error, setError] = useState<unknown>(null);
  useEffect(() => {
    const dialog = ref.current;
    if (!dialog) return;
    if (cell && !dialog.open) dialog.showModal();
    if (!cell && dialog.open) dialog.close();
  }, [cell]);
  const meta = (cell?.image?.meta ?? {}) as Dict;
  const file = cell ? files.get(cell.epoch) : undefined;
  const lora = String(meta["lora"] ?? (file ? fileStem(file) : ""));
  const rows: [string, unknown][] = cell
    ? [
        ["Prompt", meta["prompt"] ?? cell.prompt],
        ["Negative prompt", meta["negative_prompt"] || "—"],
        ["Epoch", cell.epoch],
        ["LoRA weight", cell.weight],
        ["As a tag", lora ? `<lora:${lora}:${cell.weight}>` : "—"],
        ["Seed", meta["seed"] ?? cell.seed],
        ["Steps", meta["steps"] ?? "—"],
        ["CFG scale", meta["cfg_scale"] ?? "—"],
        ["Sampler", meta["sampler"] ?? "—"],
        ["Size", meta["width"] ? `${String(meta["width"])}×${String(meta["height"])}` : "—"],
        ["File", cell.name],
      ]
    : [];
  return (
    <dialog ref={ref} class="cell-dialog" aria-labelledby="cell-dialog-title" onClose={onClose}>
      {cell && (
        <>
          <h3 id="cell-dialog-title">
            Epoch {cell.epoch}, weight {cell.weight}
          </h3>
          <div class="cell-body">
            <div class="cell-image">
              {cell.image ? (
                <AuthImage path={cell.image.download_url} alt={`Epoch ${cell.epoch} at weight ${cell.weight}: ${cell.prompt}`} />
              ) : (
                <span class="img-missing">image not listed</span>
              )}
            </div>
            <dl class="params">
              {rows.map(([k, v]) => (
                <div>
                  <dt>{k}</dt>
                  <dd class={k === "As a tag" || k === "File" ? "mono" : undefined}>{String(v)}</dd>
                </div>
              ))}
            </dl>
          </div>
          <ErrorNote error={error} />
          <div class="row">
            {file && (
              <button
                type="button"
                onClick={async () => {
                  setError(null);
                  try {
                    await downloadFile(file.download_url, file.name);
                  } catch (e) {
                    setError(e);
                  }
                }}
              >
                Download {file.name}
              </button>
            )}
            <button type="button" class="secondary" onClick={() => ref.current?.close()}>
              Close
            </button>
          </div>
        </>
      )}
    </dialog>
  );
}

function ComparisonResult({ followed, files }: { followed: Followed; files: Map<number, Artifact> }) {
  const [cell, setCell] = useState<Cell | null>(null);
  const opener = useRef<HTMLElement | null>(null);
  const { job, artifacts } = followed;
  if (!job) return null;
  const grids = artifacts.filter((a) => a.kind === "grid").sort((a, b) => a.name.localeCompare(b.name));
  const images = new Map(artifacts.filter((a) => a.kind === "image").map((a) => [a.name, a]));
  if (!grids.length) {
    if (job.status === "succeeded") return <p class="muted">This comparison drew no grid.</p>;
    if (TERMINAL.includes(job.status)) return <p class="muted">The comparison stopped before its grids were drawn; {images.size} image(s) were drawn.</p>;
    return <p class="muted">The grids appear here when the comparison has drawn every image.</p>;
  }
  return (
    <>
      {grids.map((grid) => (
        <GridView
          grid={grid}
          images={images}
          files={files}
          onOpen={(c, el) => {
            opener.current = el;
            setCell(c);
          }}
        />
      ))}
      <CellDialog
        cell={cell}
        files={files}
        onClose={() => {
          setCell(null);
          opener.current?.focus();
        }}
      />
    </>
  );
}

/** A comparison job's own page shows its grids with the cells (the training job's files are not at hand). */
export function ComparisonJobView({ id }: { id: string }) {
  const followed = useFollowedJob(id);
  return (
    <Section title="Grids" id="grids">
      <ComparisonResult followed={followed} files={new Map()} />
    </Section>
  );
}

// ---------------------------------------------------------------- the compare form

const COMPARE_FIELDS = ["prompts", "negative_prompt", "weights", "epochs", "seeds", "steps", "cfg_scale", "width", "height"] as const;

export function CompareSection({ job, artifacts }: { job: Job; artifacts: Artifact[] }) {
  const files = epochFiles(job, artifacts);
  const [prompts, setPrompts] = useState(() => defaultPrompts(job));
  const [negative, setNegative] = useState("");
  const [weights, setWeights] = useState(DEFAULT_WEIGHTS);
  // the epochs left out, not those chosen: every saved epoch is in by default, including files listed
  // after this form first drew (the job's artifacts can arrive after its final status)
  const [leftOut, setLeftOut] = useState<Set<number>>(() => new Set());
  const epochs = new Set([...files.keys()].filter((epoch) => !leftOut.has(epoch)));
  const [render, setRender] = useState<RenderSettings>(NO_RENDER_SETTINGS);
  const [error, setError] = useState<unknown>(null);
  const [cancelError, setCancelError] = useState<unknown>(null);
  const [posting, setPosting] = useState(false);
  const [history, setHistory] = useState<Job[]>([]);
  const [current, setCurrent] = useState<string | null>(null);
  const followed = useFollowedJob(current);

  // earlier comparisons of this job: GET /v1/jobs has no kind filter, so the newest 100 jobs are read
  useEffect(() => {
    let live = true;
    api
      .GET("/v1/jobs", { params: { query: { limit: 100 } } })
      .then(unwrap)
      .then((list) => {
        if (!live) return;
        const mine = list.items.filter((j) => j.kind === "compare" && (j.config as Dict)["source_job_id"] === job.id);
        setHistory((old) => [...old, ...mine.filter((j) => !old.some((o) => o.id === j.id))]);
        setCurrent((c) => c ?? mine[0]?.id ?? null);
      })
      .catch(() => {
        /* the list is a convenience; the form works without it */
      });
    return () => {
      live = false;
    };
  }, [job.id]);

  const running = posting || (followed.job !== null && !TERMINAL.includes(followed.job.status));
  const { byField, rest } = fieldErrors(error, COMPARE_FIELDS, (e) => e.message);

  async function submit(e: Event) {
    e.preventDefault();
    setError(null);
    const body: Dict = {};
    const lines = prompts.split("\n").map((l) => l.trim()).filter(Boolean);
    if (lines.length) body["prompts"] = lines;
    if (negative.trim()) body["negative_prompt"] = negative.trim();
    const w = weights.split(/[\s,]+/).filter(Boolean).map(Number);
    if (w.some((v) => !Number.isFinite(v))) {
      setError(new ApiError(0, "invalid_weights", "weights are numbers", { field: "weights" }));
      return;
    }
    if (w.length) body["weights"] = w;
    if (!epochs.size) {
      setError(new ApiError(0, "no_epochs", "choose at least one epoch", { field: "epochs" }));
      return;
    }
    body["epochs"] = [...epochs].sort((a, b) => a - b);
    const bad = addRenderSettings(body, render, "seeds");
    if (bad) {
      setError(bad);
      return;
    }
    setPosting(true);
    try {
      const made = unwrap(
        await api.POST("/v1/jobs/{job_id}/comparisons", { params: { path: { job_id: job.id } }, body: body as never }),
      );
      setHistory((old) => [made, ...old]);
      setCurrent(made.id);
    } catch (err) {
      setError(err);
    } finally {
      setPosting(false);
    }
  }

  return (
    <Section title="Compare epochs" id="compare">
      <p class="muted small">
        Draws every saved epoch (rows) at each LoRA weight (columns) with the same prompt and seed, one grid per
        prompt. Weight 0 is the base model; 1 is the trained LoRA. Left blank, a setting is the prompt line&apos;s own
        flag, else the training&apos;s sample settings.
      </p>
      <form class="compare-form" onSubmit={submit} noValidate>
        <div class="grid-2">
          <div>
            <label for="compare-prompts">Prompts (one per line, Kohya flags allowed)</label>
            <textarea
              id="compare-prompts"
              rows={3}
              value={prompts}
              onInput={(e) => setPrompts(e.currentTarget.value)}
              {...invalid("compare-prompts", byField["prompts"])}
            />
            <FieldError id="compare-prompts-error" text={byField["prompts"]} />
            <label for="compare-negative">Negative prompt (optional)</label>
            <input id="compare-negative" type="text" value={negative} onInput={(e) => setNegative(e.currentTarget.value)} {...invalid("compare-negative", byField["negative_prompt"])} />
            <FieldError id="compare-negative-error" text={byField["negative_prompt"]} />
          </div>
          <div>
            <label for="compare-weights">LoRA weights (columns)</label>
            <input id="compare-weights" type="text" value={weights} onInput={(e) => setWeights(e.currentTarget.value)} {...invalid("compare-weights", byField["weights"])} />
            <FieldError id="compare-weights-error" text={byField["weights"]} />
            <fieldset class="inline" aria-describedby={byField["epochs"] ? "compare-epochs-error" : undefined}>
              <legend>Epochs (rows)</legend>
              {[...files.entries()].map(([epoch, file]) => (
                <label class="checkbox" title={file.name}>
                  <input
                    type="checkbox"
                    checked={epochs.has(epoch)}
                    onChange={(e) => {
                      const next = new Set(leftOut);
                      if (e.currentTarget.checked) next.delete(epoch);
                      else next.add(epoch);
                      setLeftOut(next);
                    }}
                  />
                  Epoch {epoch}
                  {file.is_final ? " (final)" : ""}
                </label>
              ))}
            </fieldset>
            <FieldError id="compare-epochs-error" text={byField["epochs"]} />
          </div>
        </div>
        <RenderFields
          prefix="compare"
          value={render}
          onChange={setRender}
          byField={byField}
          seedField="seeds"
          seedPlaceholder="the sample's"
          sizePlaceholder="sample's"
        />
        {rest && <ErrorNote error={rest} />}
        <button type="submit" disabled={running}>
          {posting ? "Starting…" : running ? "Comparison running…" : "Compare epochs"}
        </button>
      </form>
      {history.length > 1 && (
        <div class="filters">
          <label for="compare-history">Comparison</label>
          <select id="compare-history" value={current ?? ""} onChange={(e) => setCurrent(e.currentTarget.value)}>
            {history.map((j) => (
              <option value={j.id}>
                {formatTime(j.created_at)} · {j.status} · {j.id.slice(0, 8)}
              </option>
            ))}
          </select>
        </div>
      )}
      <ErrorNote error={cancelError ?? followed.error} />
      {current && <RunningJob followed={followed} label="Comparison" onCancelError={setCancelError} />}
      {current && <ComparisonResult followed={followed} files={files} />}
    </Section>
  );
}

// ---------------------------------------------------------------- the preview box

const PREVIEW_FIELDS = ["prompt", "negative_prompt", "seed", "steps", "cfg_scale", "width", "height", "base_model", "sampler"] as const;

export function PreviewSection({ job, artifacts }: { job: Job; artifacts: Artifact[] }) {
  const files = epochFiles(job, artifacts);
  const final = [...files.values()].find((a) => a.is_final) ?? [...files.values()].pop();
  const baseModel = String((job.config as Dict)["base_model"] ?? "");
  // blank settings are the API's defaults: with this job's LoRA, its training size and sample settings
  const resolution = (job.config as Dict)["resolution"];
  // the default follows the job's files until the user types (the final file can be listed after the
  // job's final status, when this form has already drawn)
  const [typed, setPrompt] = useState<string | null>(null);
  const prompt = typed ?? [final ? `<lora:${fileStem(final)}:1>` : "", triggerClass(job)].filter(Boolean).join(" ");
  const [negative, setNegative] = useState("");
  const [render, setRender] = useState<RenderSettings>(NO_RENDER_SETTINGS);
  const [error, setError] = useState<unknown>(null);
  const [cancelError, setCancelError] = useState<unknown>(null);
  const [posting, setPosting] = useState(false);
  const [current, setCurrent] = useState<string | null>(null);
  const followed = useFollowedJob(current);
  const running = posting || (followed.job !== null && !TERMINAL.includes(followed.job.status));
  const { byField, rest } = fieldErrors(error, PREVIEW_FIELDS, generationWords);
  const image = followed.artifacts.find((a) => a.kind === "image");
  const meta = (image?.meta ?? {}) as Dict;

  async function submit(e: Event) {
    e.preventDefault();
    setError(null);
    setCurrent(null); // the last preview goes: what shows next is this request's image, or its error
    const body: Dict = { base_model: baseModel, prompt };
    if (negative.trim()) body["negative_prompt"] = negative.trim();
    const bad = addRenderSettings(body, render, "seed");
    if (bad) {
      setError(bad);
      return;
    }
    setPosting(true);
    try {
      const made = unwrap(await api.POST("/v1/generations", { body: body as never }));
      setCurrent(made.id);
    } catch (err) {
      setError(err);
    } finally {
      setPosting(false);
    }
  }

  return (
    <Section title="Preview" id="preview">
      <p class="muted small">
        One image from <code>{baseModel}</code> with any of your LoRA files, as in A1111: put{" "}
        <code>&lt;lora:NAME:WEIGHT&gt;</code> tags anywhere in the prompt (NAME: a file name from a job&apos;s Files
        list, without <code>.safetensors</code>). Left blank, a setting is the prompt&apos;s flag, else the first
        LoRA&apos;s training size and sample settings.
      </p>
      <form class="preview-form" onSubmit={submit} noValidate>
        <label for="preview-prompt">Prompt</label>
        <textarea
          id="preview-prompt"
          rows={2}
          value={prompt}
          onInput={(e) => setPrompt(e.currentTarget.value)}
          {...invalid("preview-prompt", byField["prompt"])}
        />
        <FieldError id="preview-prompt-error" text={byField["prompt"]} />
        <label for="preview-negative">Negative prompt (optional)</label>
        <input id="preview-negative" type="text" value={negative} onInput={(e) => setNegative(e.currentTarget.value)} {...invalid("preview-negative", byField["negative_prompt"])} />
        <FieldError id="preview-negative-error" text={byField["negative_prompt"]} />
        <RenderFields
          prefix="preview"
          value={render}
          onChange={setRender}
          byField={byField}
          seedField="seed"
          seedPlaceholder="random"
          sizePlaceholder={typeof resolution === "number" ? String(resolution) : "training's"}
        />
        {rest && <ErrorNote error={rest} />}
        <button type="submit" disabled={running || !baseModel}>
          {posting ? "Starting…" : running ? "Preview running…" : "Draw preview"}
        </button>
      </form>
      <ErrorNote error={cancelError ?? followed.error} />
      {current && <RunningJob followed={followed} label="Preview" onCancelError={setCancelError} />}
      {image && (
        <figure class="preview-result">
          <AuthImage path={image.download_url} alt={`Preview: ${String((followed.job?.config as Dict | undefined)?.["prompt_line"] ?? prompt)}`} />
          <figcaption class="small">
            <span class="mono">{String((followed.job?.config as Dict | undefined)?.["prompt_line"] ?? "")}</span>
            <span class="muted">
              {" "}
              · seed {String(meta["seed"] ?? "?")} · {String(meta["steps"] ?? "?")} steps · CFG {String(meta["cfg_scale"] ?? "?")} ·{" "}
              {String(meta["sampler"] ?? "?")} · {String(meta["width"] ?? "?")}×{String(meta["height"] ?? "?")}
            </span>
          </figcaption>
        </figure>
      )}
    </Section>
  );
}
