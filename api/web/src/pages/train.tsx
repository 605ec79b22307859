// "New training": a dataset, a base model and a preset, then the TrainingConfig fields that apply to the
// base model's family (families.ts), with the live plan beside them (train-plan.tsx).
import type { ComponentChildren } from "preact";
import { useEffect, useState } from "preact/hooks";
import { api, type DatasetSummary, formatBytes, type Schemas, unwrap } from "../api";
import { ErrorNote, Section } from "../components";
import { applicableValues, applies, chosenFamily, type Families, type FamilyFields, presetValues } from "../families";
import { href, navigate } from "../router";
import { type FormValues, fieldKind, type JsonSchema, parseValues, SchemaField, useSchema, valuesFrom } from "../schema-form";
import { KohyaImport } from "./kohya-import";
import { placeErrors, PlanView, usePlan } from "./train-plan";

// The fields most runs set, shown first; then the chosen family's own fields; every other TrainingConfig
// field that applies follows under "All other fields".
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
type Model = Schemas["ModelOut"];
type Preset = Schemas["PresetOut"];

function modelText(m: Model, families: Families): string {
  const family = m.family ? (families[m.family]?.label ?? m.family) : "family read when loaded";
  return `${m.name} (${family}, ${formatBytes(m.size_bytes)}${m.workers_online ? "" : ", no worker online"})`;
}

function Picks({
  datasets,
  dataset,
  onDataset,
  models,
  baseModel,
  onBaseModel,
  presets,
  preset,
  onPreset,
  families,
}: {
  datasets: DatasetSummary[];
  dataset: string;
  onDataset: (id: string) => void;
  models: Model[];
  baseModel: string;
  onBaseModel: (name: string) => void;
  presets: Preset[];
  preset: string;
  onPreset: (name: string) => void;
  families: Families;
}) {
  const chosenSet = datasets.find((d) => d.id === dataset);
  const chosenModel = models.find((m) => m.name === baseModel);
  const setText = (d: DatasetSummary) => `${d.name} (${d.images} images, revision ${d.caption_revision})`;
  return (
    <Section title="What to train" id="what">
      <div class="fields">
        <div class="field wide">
          <label for="train-dataset">Dataset</label>
          <select id="train-dataset" value={dataset} required title={chosenSet ? setText(chosenSet) : undefined} onChange={(e) => onDataset(e.currentTarget.value)}>
            {!datasets.length && <option value="">no datasets yet</option>}
            {datasets.map((d) => (
              <option value={d.id}>{setText(d)}</option>
            ))}
          </select>
          <small class="help">
            Trains on the dataset&apos;s current caption revision. <a href={href({ page: "datasets" })}>Upload one</a>
          </small>
        </div>
        <div class="field wide">
          <label for="train-base-model">
            Base model <code class="kohya">pretrained_model_name_or_path</code>
          </label>
          <select
            id="train-base-model"
            value={baseModel}
            required
            title={chosenModel ? modelText(chosenModel, families) : undefined}
            onChange={(e) => onBaseModel(e.currentTarget.value)}
          >
            {!models.length && <option value="">no base models reported</option>}
            {models.map((m) => (
              <option value={m.name}>{modelText(m, families)}</option>
            ))}
          </select>
          <small class="help">
            From GET /v1/models: what this deployment&apos;s workers have
            {chosenModel ? ` (${chosenModel.kind.replace("_", " ")}, ${chosenModel.source})` : ""}. The fields below
            are those of its family.
          </small>
        </div>
        <div class="field">
          <label for="train-preset">Preset</label>
          <select id="train-preset" value={preset} onChange={(e) => onPreset(e.currentTarget.value)}>
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
  );
}

/** The chosen family's own fields (FLUX.1: guidance, timestep sampling, T5 tokens, blocks...), and what it
 * hides and why. */
function FamilySection({ family, name, count, children }: { family: FamilyFields; name: string; count: number; children: ComponentChildren }) {
  const hidden = Object.entries(family.not_applicable);
  return (
    <details open class="family-fields" data-family={name}>
      <summary>
        {family.label} settings ({count})
      </summary>
      <div class="fields">{children}</div>
      {hidden.length > 0 && (
        <p class="muted small" data-testid="hidden-fields">
          Not shown for {family.label} (they do not apply):{" "}
          {hidden.map(([field, why], i) => (
            <>
              {i ? ", " : ""}
              <code title={why}>{field}</code>
            </>
          ))}
          .
        </p>
      )}
    </details>
  );
}

export function TrainPage({ datasetId }: { datasetId: string | null }) {
  const { schema, error: schemaError } = useSchema("TrainingConfig");
  const [datasets, setDatasets] = useState<DatasetSummary[]>([]);
  const [models, setModels] = useState<Model[]>([]);
  const [presets, setPresets] = useState<Preset[]>([]);
  const [families, setFamilies] = useState<Families>({});
  const [dataset, setDataset] = useState(datasetId ?? "");
  const [preset, setPreset] = useState("");
  const [baseModel, setBaseModel] = useState("");
  const [values, setValues] = useState<FormValues>({});
  const [error, setError] = useState<unknown>(null);
  const [busy, setBusy] = useState(false);
  const [othersOpen, setOthersOpen] = useState(false);

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
    api.GET("/v1/presets").then((r) => {
      if (r.data) {
        setPresets(r.data.items);
        setFamilies(r.data.families);
      }
    });
  }, []);

  const familyName = chosenFamily(values, models, baseModel);
  const family = familyName ? (families[familyName] ?? null) : null;
  // a field that does not apply to the family is never sent, and its value goes when the family changes
  useEffect(() => setValues((old) => applicableValues(old, family)), [family]);

  const parsed = schema ? parseValues(applicableValues(values, family), schema) : { config: {}, errors: {} };
  const config: Record<string, unknown> = { ...parsed.config, base_model: baseModel };
  if (preset) config["preset"] = preset;
  const ready = schema && dataset && baseModel && !Object.keys(parsed.errors).length;
  const planState = usePlan(ready ? { dataset_id: dataset, config } : null);

  if (!schema) return schemaError ? <ErrorNote error={schemaError} /> : <p>Loading the config fields…</p>;
  const properties = schema.properties ?? {};
  const onForm = (name: string) =>
    name in properties && applies(name, family) && !PICKED_ELSEWHERE.includes(name) && fieldKind(properties[name]!).kind !== "ref";
  const fromPlan = placeErrors(planState.error, onForm);
  const fromSubmit = placeErrors(error, onForm);
  const fieldError = (name: string) => parsed.errors[name] ?? fromPlan.byField[name] ?? fromSubmit.byField[name];
  const resolved = (planState.plan?.config ?? {}) as Record<string, unknown>;
  const fromPreset = presetValues(
    presets.find((p) => p.name === preset),
    familyName,
  );
  const hint = (name: string) => {
    const v = resolved[name] ?? fromPreset[name];
    if (v === undefined || v === null) return family?.defaults[name];
    return Array.isArray(v) ? (v.length ? v.join(" | ") : undefined) : typeof v === "object" ? JSON.stringify(v) : String(v);
  };
  const field = (name: string) => (
    <SchemaField
      name={name}
      schema={properties[name] as JsonSchema}
      value={values[name] ?? ""}
      hint={hint(name)}
      note={family?.notes[name]}
      error={fieldError(name)}
      idPrefix="config"
      onChange={(k, v) => setValues((old) => ({ ...old, [k]: v }))}
    />
  );
  const main = MAIN_FIELDS.filter(onForm);
  const own = (family?.fields ?? []).filter((n) => onForm(n) && !main.includes(n));
  const others = Object.keys(properties).filter((n) => onForm(n) && !main.includes(n) && !own.includes(n));

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
          <Picks
            datasets={datasets}
            dataset={dataset}
            onDataset={setDataset}
            models={models}
            baseModel={baseModel}
            onBaseModel={setBaseModel}
            presets={presets}
            preset={preset}
            onPreset={setPreset}
            families={families}
          />
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
            <div class="fields">{main.map(field)}</div>
            {family && familyName && own.length > 0 && (
              <FamilySection family={family} name={familyName} count={own.length}>
                {own.map(field)}
              </FamilySection>
            )}
            <details open={othersOpen || others.some((n) => fieldError(n))} onToggle={(e) => setOthersOpen(e.currentTarget.open)}>
              <summary>All other fields ({others.length})</summary>
              <div class="fields">{others.map(field)}</div>
            </details>
          </Section>
          <ErrorNote error={fromSubmit.rest} />
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
          <PlanView state={planState} placed={fromPlan.byField} rest={fromPlan.rest} idPrefix="config" />
        </aside>
      </div>
    </>
  );
}
