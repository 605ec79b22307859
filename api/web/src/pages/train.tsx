import { useEffect, useRef, useState } from "preact/hooks";
import { api, asApiError, type DatasetSummary, formatBytes, type PlanOut, type Schemas, unwrap } from "../api";
import { ErrorNote, Section } from "../components";
import { href, navigate } from "../router";
import { type FormValues, fieldKind, type JsonSchema, parseValues, SchemaField, useSchema, valuesFrom } from "../schema-form";

// The fields most runs set, shown first; every other TrainingConfig field follows under "All other fields".
const MAIN_FIELDS = [
  "output_name",
  "resolution",
  "epochs",
  "batch_size",
  "network_dim",
  "network_alpha",
  "unet_lr",
  "text_encoder_lr",
  "optimizer",
  "lr_scheduler",
  "mixed_precision",
  "save_every_n_epochs",
  "sample_prompts",
  "sample_every_n_epochs",
  "seed",
];
const PICKED_ELSEWHERE = ["preset", "base_model", "captioning"];

type Plan = {
  images?: number;
  reg_images?: number;
  repeats?: number | null;
  epochs?: number;
  batch_size?: number;
  samples_per_epoch?: number;
  steps_per_epoch?: number;
  total_steps?: number;
  saved_epochs?: number[];
  buckets?: { width: number; height: number; images: number; samples: number; batches: number }[];
};
type Warning = { code?: string; message?: string };

function PlanView({ plan, busy, error }: { plan: PlanOut | null; busy: boolean; error: unknown }) {
  const p = (plan?.plan ?? {}) as Plan;
  return (
    <Section title="Plan" id="plan">
      <p class="muted small" aria-live="polite">
        {busy ? "Updating…" : plan ? "Counted as Kohya counts (POST /v1/plan); nothing is stored." : "Pick a dataset and a base model."}
      </p>
      <ErrorNote error={error} />
      {plan && (
        <>
          <dl class="stats" data-testid="plan">
            <div>
              <dt>Steps per epoch</dt>
              <dd data-testid="plan-steps-per-epoch">{p.steps_per_epoch}</dd>
            </div>
            <div>
              <dt>Total steps</dt>
              <dd data-testid="plan-total-steps">{p.total_steps}</dd>
            </div>
            <div>
              <dt>Epochs</dt>
              <dd>{p.epochs}</dd>
            </div>
            <div>
              <dt>Images × repeats</dt>
              <dd>
                {p.images} × {p.repeats ?? "mixed"}
                {p.reg_images ? ` + ${p.reg_images} reg` : ""}
              </dd>
            </div>
            <div>
              <dt>Saved epochs</dt>
              <dd data-testid="plan-saved-epochs">{(p.saved_epochs ?? []).join(", ")}</dd>
            </div>
            <div>
              <dt>Files kept</dt>
              <dd>{plan.checkpoint_count}</dd>
            </div>
          </dl>
          {p.buckets?.length ? (
            <table class="list compact">
              <caption>Buckets</caption>
              <thead>
                <tr>
                  <th scope="col">Size</th>
                  <th scope="col">Images</th>
                  <th scope="col">Samples / epoch</th>
                  <th scope="col">Batches</th>
                </tr>
              </thead>
              <tbody>
                {p.buckets.map((b) => (
                  <tr>
                    <td>
                      {b.width}×{b.height}
                    </td>
                    <td>{b.images}</td>
                    <td>{b.samples}</td>
                    <td>{b.batches}</td>
                  </tr>
                ))}
              </tbody>
            </table>
          ) : null}
          {(plan.warnings as Warning[]).length > 0 && (
            <ul class="warnings" aria-label="Plan warnings">
              {(plan.warnings as Warning[]).map((w) => (
                <li>
                  <code>{w.code}</code> {w.message}
                </li>
              ))}
            </ul>
          )}
        </>
      )}
    </Section>
  );
}

function KohyaImport({ onImported }: { onImported: (config: Record<string, unknown>) => void }) {
  const [text, setText] = useState("");
  const [result, setResult] = useState<Schemas["KohyaImportOut"] | null>(null);
  const [error, setError] = useState<unknown>(null);
  async function run(source: string) {
    setError(null);
    try {
      const parsed = JSON.parse(source) as Record<string, unknown>;
      const out = unwrap(await api.POST("/v1/configs/kohya", { body: parsed as never }));
      setResult(out);
      onImported(out.config as Record<string, unknown>);
    } catch (e) {
      setError(e instanceof SyntaxError ? new Error(`not JSON: ${e.message}`) : e);
    }
  }
  const describe = (item: unknown): string => {
    if (typeof item === "string") return item;
    const o = (item ?? {}) as Record<string, unknown>;
    const name = o["key"] ?? o["field"] ?? o["name"];
    const why = o["reason"] ?? o["message"] ?? o["note"];
    return name !== undefined ? `${String(name)}${why ? ` (${String(why)})` : ""}` : JSON.stringify(item);
  };
  const list = (items: unknown[]) => items.map(describe).join("; ");
  return (
    <details class="card">
      <summary>Import a kohya_ss config</summary>
      <p class="muted small">The JSON the kohya_ss GUI saves. Its values fill the form below; what has no equivalent is listed.</p>
      <label for="kohya-file">Config file</label>
      <input
        id="kohya-file"
        type="file"
        accept=".json,application/json"
        onChange={async (e) => {
          const file = e.currentTarget.files?.[0];
          if (file) {
            const content = await file.text();
            setText(content);
            await run(content);
          }
        }}
      />
      <label for="kohya-json">Or paste it</label>
      <textarea id="kohya-json" rows={4} value={text} onInput={(e) => setText(e.currentTarget.value)} />
      <button type="button" class="secondary" disabled={!text.trim()} onClick={() => void run(text)}>
        Import
      </button>
      <ErrorNote error={error} />
      {result && (
        <div class="import-result" role="status">
          <p>Imported {result.mapped.length} settings.</p>
          {result.ignored.length > 0 && <p class="small">Ignored: {list(result.ignored)}</p>}
          {result.unsupported.length > 0 && <p class="small warn-text">Unsupported: {list(result.unsupported)}</p>}
          {result.notes.length > 0 && (
            <ul class="small">
              {result.notes.map((n) => (
                <li>{describe(n)}</li>
              ))}
            </ul>
          )}
        </div>
      )}
    </details>
  );
}

export function TrainPage({ datasetId }: { datasetId: string | null }) {
  const { schema, error: schemaError } = useSchema("TrainingConfig");
  const [datasets, setDatasets] = useState<DatasetSummary[]>([]);
  const [models, setModels] = useState<Schemas["ModelOut"][]>([]);
  const [presets, setPresets] = useState<Schemas["PresetOut"][]>([]);
  const [dataset, setDataset] = useState(datasetId ?? "");
  const [preset, setPreset] = useState("");
  const [baseModel, setBaseModel] = useState("");
  const [values, setValues] = useState<FormValues>({});
  const [plan, setPlan] = useState<PlanOut | null>(null);
  const [planError, setPlanError] = useState<unknown>(null);
  const [planBusy, setPlanBusy] = useState(false);
  const [error, setError] = useState<unknown>(null);
  const [busy, setBusy] = useState(false);
  const planSeq = useRef(0);

  useEffect(() => {
    api.GET("/v1/datasets", { params: { query: { limit: 100 } } }).then((r) => {
      if (r.data) {
        setDatasets(r.data.items);
        if (!datasetId && r.data.items[0]) setDataset(r.data.items[0].id);
      } else setError(r.error);
    });
    api.GET("/v1/models").then((r) => {
      if (r.data) {
        setModels(r.data.items);
        if (r.data.items[0]) setBaseModel((old) => old || r.data.items[0]!.name);
      }
    });
    api.GET("/v1/presets").then((r) => r.data && setPresets(r.data.items));
  }, []);

  const parsed = schema ? parseValues(values, schema) : { config: {}, errors: {} };
  const config: Record<string, unknown> = { ...parsed.config, base_model: baseModel };
  if (preset) config["preset"] = preset;
  const configKey = JSON.stringify([dataset, config]);

  useEffect(() => {
    if (!schema || !dataset || !baseModel || Object.keys(parsed.errors).length) return;
    const seq = ++planSeq.current;
    setPlanBusy(true);
    const timer = setTimeout(async () => {
      const result = await api.POST("/v1/plan", { body: { dataset_id: dataset, config } as never });
      if (seq !== planSeq.current) return;
      setPlanBusy(false);
      if (result.data) {
        setPlan(result.data);
        setPlanError(null);
      } else setPlanError(asApiError(result.error, result.response.status));
    }, 350);
    return () => clearTimeout(timer);
  }, [configKey, schema]);

  if (!schema) return schemaError ? <ErrorNote error={schemaError} /> : <p>Loading the config fields…</p>;
  const properties = schema.properties ?? {};
  const resolved = (plan?.config ?? {}) as Record<string, unknown>;
  const presetValues = (presets.find((p) => p.name === preset)?.values ?? {}) as Record<string, unknown>;
  const planField = planError ? String(((planError as { details?: Record<string, unknown> }).details ?? {})["field"] ?? "") : "";
  const fieldError = (name: string) =>
    parsed.errors[name] ?? (planField === `config.${name}` ? (planError as Error).message : undefined);
  const hint = (name: string) => {
    const v = name in resolved ? resolved[name] : presetValues[name];
    if (v === undefined || v === null) return undefined;
    return Array.isArray(v) ? (v.length ? v.join(" | ") : undefined) : typeof v === "object" ? JSON.stringify(v) : String(v);
  };
  const field = (name: string) => (
    <SchemaField
      name={name}
      schema={properties[name] as JsonSchema}
      value={values[name] ?? ""}
      hint={hint(name)}
      error={fieldError(name)}
      idPrefix="config"
      onChange={(k, v) => setValues((old) => ({ ...old, [k]: v }))}
    />
  );
  const others = Object.keys(properties).filter(
    (n) => !MAIN_FIELDS.includes(n) && !PICKED_ELSEWHERE.includes(n) && fieldKind(properties[n]!).kind !== "ref",
  );

  async function submit(e: Event) {
    e.preventDefault();
    if (Object.keys(parsed.errors).length) return;
    setBusy(true);
    setError(null);
    try {
      const job = unwrap(await api.POST("/v1/jobs", { body: { dataset_id: dataset, config } as never }));
      navigate({ page: "job", id: job.id });
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  }

  return (
    <>
      <h1>New training</h1>
      <div class="train-layout">
        <form onSubmit={submit} class="train-form" aria-label="Training configuration">
          <Section title="What to train" id="what">
            <div class="fields">
              <div class="field">
                <label for="train-dataset">Dataset</label>
                <select id="train-dataset" value={dataset} required onChange={(e) => setDataset(e.currentTarget.value)}>
                  {!datasets.length && <option value="">no datasets yet</option>}
                  {datasets.map((d) => (
                    <option value={d.id}>
                      {d.name} ({d.images} images, revision {d.caption_revision})
                    </option>
                  ))}
                </select>
                <small class="help">
                  Trains on the dataset&apos;s current caption revision. <a href={href({ page: "datasets" })}>Upload one</a>
                </small>
              </div>
              <div class="field">
                <label for="train-base-model">
                  Base model <code class="kohya">pretrained_model_name_or_path</code>
                </label>
                <select id="train-base-model" value={baseModel} required onChange={(e) => setBaseModel(e.currentTarget.value)}>
                  {!models.length && <option value="">no base models reported</option>}
                  {models.map((m) => (
                    <option value={m.name}>
                      {m.name} ({m.family ?? "?"}, {m.kind}, {formatBytes(m.size_bytes)}
                      {m.workers_online ? "" : ", no worker online"})
                    </option>
                  ))}
                </select>
                <small class="help">From GET /v1/models: what this deployment&apos;s workers have.</small>
              </div>
              <div class="field">
                <label for="train-preset">Preset</label>
                <select id="train-preset" value={preset} onChange={(e) => setPreset(e.currentTarget.value)}>
                  <option value="">none</option>
                  {presets.map((p) => (
                    <option value={p.name}>{p.name}</option>
                  ))}
                </select>
                <small class="help">
                  {presets.find((p) => p.name === preset)?.description ?? "Fills the fields you leave empty from the guide's advice."}
                </small>
              </div>
            </div>
          </Section>
          <KohyaImport
            onImported={(imported) => {
              setValues(valuesFrom(imported, schema));
              if (typeof imported["preset"] === "string") setPreset(imported["preset"]);
              if (typeof imported["base_model"] === "string" && models.some((m) => m.name === imported["base_model"])) {
                setBaseModel(imported["base_model"]);
              }
            }}
          />
          <Section title="Settings" id="settings">
            <p class="muted small">Empty fields take the preset&apos;s value or the default, shown greyed.</p>
            <div class="fields">{MAIN_FIELDS.filter((n) => properties[n]).map(field)}</div>
            <details>
              <summary>All other fields ({others.length})</summary>
              <div class="fields">{others.map(field)}</div>
            </details>
          </Section>
          <ErrorNote error={error} />
          <div class="row sticky-actions">
            <button type="submit" disabled={busy || !dataset || !baseModel}>
              {busy ? "Submitting…" : "Start training"}
            </button>
            <button type="button" class="secondary" onClick={() => setValues({})}>
              Clear settings
            </button>
          </div>
        </form>
        <aside class="plan-side">
          <PlanView plan={plan} busy={planBusy} error={planError} />
        </aside>
      </div>
    </>
  );
}
