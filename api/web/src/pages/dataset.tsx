import { useEffect, useMemo, useState } from "preact/hooks";
import { api, type Dataset, formatBytes, formatTime, plural, type Schemas, unwrap } from "../api";
import { AuthImage, ErrorNote, Section } from "../components";
import { href, navigate } from "../router";
import { type FormValues, parseValues, SchemaField, useSchema } from "../schema-form";

type FileReport = { path: string; status: string; reason?: string | null; detail?: string | null; conversions?: string[] };
type Warning = { code?: string; message?: string; count?: number; examples?: string[] };
type Caption = Schemas["CaptionOut"];
type TagCount = Schemas["TagCount"];

function splitTags(caption: string | null | undefined): string[] {
  return (caption ?? "")
    .split(",")
    .map((t) => t.trim())
    .filter(Boolean);
}

function IntakeReport({ dataset }: { dataset: Dataset }) {
  const files = dataset.files as FileReport[];
  const counts = { accepted: 0, converted: 0, rejected: 0 } as Record<string, number>;
  for (const f of files) counts[f.status] = (counts[f.status] ?? 0) + 1;
  const [filter, setFilter] = useState("");
  const shownFiles = filter ? files.filter((f) => f.status === filter) : files;
  return (
    <Section title="Intake report" id="report">
      <p class="summary" data-testid="intake-summary">
        <span class="badge badge-succeeded">{counts["accepted"] ?? 0} accepted</span>{" "}
        <span class="badge badge-preparing">{counts["converted"] ?? 0} converted</span>{" "}
        <span class="badge badge-failed">{counts["rejected"] ?? 0} rejected</span>{" "}
        {counts["mask"] ? (
          <>
            <span class="badge badge-file-mask">{counts["mask"]} loss mask(s)</span>{" "}
          </>
        ) : null}
        <span class="muted">
          · {dataset.images} training images, {dataset.reg_images} regularization · {formatBytes(dataset.bytes)} ·
          uploaded {formatTime(dataset.created_at)}
        </span>
      </p>
      <ul class="subsets">
        {(dataset.subsets as Record<string, unknown>[]).map((s) => (
          <li>
            <code>{String(s["folder"])}</code>: {plural(Number(s["images"]), "image")} × {plural(Number(s["repeats"]), "repeat")}
            {s["is_reg"] ? " (regularization)" : ""}
            {s["trigger"] ? (
              <>
                {" "}
                · trigger <code>{String(s["trigger"])}</code>
              </>
            ) : null}
            {s["class_token"] ? (
              <>
                {" "}
                · class <code>{String(s["class_token"])}</code>
              </>
            ) : null}
          </li>
        ))}
      </ul>
      {(dataset.warnings as Warning[]).length > 0 && (
        <ul class="warnings" aria-label="Dataset warnings">
          {(dataset.warnings as Warning[]).map((w) => (
            <li>
              <code>{w.code}</code> {w.message}
              {w.examples?.length ? <span class="muted"> (e.g. {w.examples.join(", ")})</span> : null}
            </li>
          ))}
        </ul>
      )}
      <div class="filters">
        <label for="file-filter">Show files</label>
        <select id="file-filter" value={filter} onChange={(e) => setFilter(e.currentTarget.value)}>
          <option value="">all ({files.length})</option>
          <option value="accepted">accepted</option>
          <option value="converted">converted</option>
          <option value="rejected">rejected</option>
          {counts["mask"] ? <option value="mask">loss masks</option> : null}
        </select>
      </div>
      <table class="list compact">
        <caption class="visually-hidden">Every file of the zip and what became of it</caption>
        <thead>
          <tr>
            <th scope="col">File</th>
            <th scope="col">Result</th>
            <th scope="col">Why / how</th>
          </tr>
        </thead>
        <tbody>
          {shownFiles.map((f) => (
            <tr>
              <td class="mono">{f.path}</td>
              <td>
                <span class={`badge badge-file-${f.status}`}>{f.status}</span>
              </td>
              <td>
                {f.reason ? <code>{f.reason}</code> : null} {f.detail ?? ""} {(f.conversions ?? []).join(", ")}
              </td>
            </tr>
          ))}
        </tbody>
      </table>
    </Section>
  );
}

type Subset = { folder?: string; trigger?: string | null; class_token?: string | null };

/** What an image without a caption trains on, as Kohya does: its folder's words after `N_` ("mychar person"
 * for `img/5_mychar person`), or for a flat folder the job's trigger_word and class_word. */
export function emptyCaptionText(folder: string, subsets: Subset[]): string {
  const subset = subsets.find((s) => s.folder === folder);
  const words = [subset?.trigger, subset?.class_token].filter((w): w is string => typeof w === "string" && w !== "");
  if (words.length) return `none: trains on “${words.join(" ")}” (from the folder name)`;
  return "none: trains on the job's trigger_word and class_word (else an empty caption)";
}

function CaptionCard({
  image,
  caption,
  emptyText,
  readOnly,
  onSave,
}: {
  image: Schemas["DatasetImageOut"];
  caption: string | null;
  emptyText: string;
  readOnly: boolean;
  onSave: (imageId: string, caption: string | null) => Promise<void>;
}) {
  const [text, setText] = useState(caption ?? "");
  const [busy, setBusy] = useState(false);
  useEffect(() => setText(caption ?? ""), [caption]);
  const dirty = text !== (caption ?? "");
  const id = `caption-${image.id}`;
  const tags = splitTags(text);
  async function save(next: string) {
    setBusy(true);
    try {
      await onSave(image.id, next.trim() === "" ? null : next);
    } finally {
      setBusy(false);
    }
  }
  return (
    <li class="caption-card" data-image-path={image.path}>
      <AuthImage path={image.thumbnail_url} alt={image.path} width={128} height={128} />
      <div class="caption-body">
        <label for={id} class="mono small">
          {image.path}
          {image.is_reg ? " (regularization)" : ""}
        </label>
        <textarea
          id={id}
          rows={3}
          value={text}
          readOnly={readOnly}
          placeholder={emptyText}
          onInput={(e) => setText(e.currentTarget.value)}
          onKeyDown={(e) => {
            if (e.key === "Enter" && (e.ctrlKey || e.metaKey) && dirty) {
              e.preventDefault();
              void save(text);
            }
          }}
        />
        <ul class="chips" aria-label={`Tags of ${image.path}`}>
          {tags.map((tag, i) => (
            <li class="chip">
              {tag}
              {!readOnly && (
                <button
                  type="button"
                  class="chip-remove"
                  aria-label={`Remove tag ${tag} from ${image.path}`}
                  disabled={busy}
                  onClick={() => {
                    const next = tags.filter((_, j) => j !== i).join(", ");
                    setText(next);
                    void save(next);
                  }}
                >
                  ×
                </button>
              )}
            </li>
          ))}
        </ul>
        {!readOnly && (
          <div class="row">
            <button type="button" disabled={!dirty || busy} onClick={() => void save(text)}>
              Save caption
            </button>
            {dirty && (
              <button type="button" class="secondary" onClick={() => setText(caption ?? "")}>
                Undo
              </button>
            )}
            <span class="muted small">
              {image.caption_source !== "none" ? `source: ${image.caption_source}` : ""}
            </span>
          </div>
        )}
      </div>
    </li>
  );
}

const CAPTION_COMMON = ["existing", "prefix", "postfix", "batch_size"];
/** What the sentence captioners share: where the trigger word goes, and the vision-language models' decoding. */
const TRIGGER = ["trigger_placement", "trigger_word", "class_word"];
const VLM = ["max_new_tokens", "do_sample", "temperature", "precision"];
export const CAPTION_METHODS: { value: string; label: string }[] = [
  { value: "blip", label: "BLIP (sentences, photos)" },
  { value: "wd14", label: "WD14 (tags, anime)" },
  { value: "florence2", label: "Florence-2 (detailed sentence, FLUX)" },
  { value: "qwen_vl", label: "Qwen-VL (your instruction)" },
  { value: "joycaption", label: "JoyCaption (caption types)" },
];
const CAPTION_ONLY: Record<string, string[]> = {
  blip: ["blip_model", "beam_search", "num_beams", "min_length", "max_length", "top_p"],
  wd14: [
    "wd14_model",
    "general_threshold",
    "character_threshold",
    "undesired_tags",
    "replace_underscores",
    "always_first_tags",
    "trigger_first",
    "include_rating_tags",
    "tag_separator",
  ],
  florence2: ["florence2_model", "florence2_task", ...TRIGGER, ...VLM],
  qwen_vl: ["qwen_vl_model", "instruction", "caption_length", ...TRIGGER, ...VLM],
  joycaption: ["joycaption_model", "joycaption_type", "caption_length", "instruction", ...TRIGGER, ...VLM],
};

/** Which captioner wrote a revision (GET captions' `source` and `captioner`), in one line. */
export function captionerText(source: string | null | undefined, captioner: Record<string, unknown> | null | undefined): string {
  if (!source) return "";
  if (!captioner) return `made by: ${source}`;
  const method = typeof captioner["method"] === "string" ? captioner["method"] : source;
  const model = typeof captioner["model"] === "string" ? ` (${captioner["model"]})` : "";
  return `captioned by ${method}${model}`;
}

function CaptioningForm({ dataset }: { dataset: Dataset }) {
  const { schema, error: schemaError } = useSchema("CaptionConfig");
  const [method, setMethod] = useState("wd14");
  const [values, setValues] = useState<FormValues>({});
  const [error, setError] = useState<unknown>(null);
  const [busy, setBusy] = useState(false);
  if (!schema) return <ErrorNote error={schemaError} />;
  const names = [...(CAPTION_ONLY[method] ?? []), ...CAPTION_COMMON].filter((n) => schema.properties?.[n]);
  async function submit(e: Event) {
    e.preventDefault();
    const picked: FormValues = {};
    for (const n of names) if (values[n] !== undefined) picked[n] = values[n]!;
    const { config, errors } = parseValues(picked, schema!);
    if (Object.keys(errors).length) {
      setError(new Error(Object.entries(errors).map(([k, v]) => `${k}: ${v}`).join("; ")));
      return;
    }
    setBusy(true);
    try {
      const job = unwrap(
        await api.POST("/v1/datasets/{dataset_id}/caption", {
          params: { path: { dataset_id: dataset.id } },
          body: { method, ...config } as Schemas["CaptionJobRequest"],
        }),
      );
      navigate({ page: "job", id: job.id });
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  }
  return (
    <form onSubmit={submit}>
      <fieldset class="inline">
        <legend>Captioner</legend>
        {CAPTION_METHODS.map((m) => (
          <label class="radio">
            <input
              type="radio"
              name="caption-method"
              value={m.value}
              checked={method === m.value}
              onChange={() => setMethod(m.value)}
            />
            {m.label}
          </label>
        ))}
      </fieldset>
      <div class="fields">
        {names.map((n) => (
          <SchemaField
            name={n}
            schema={schema.properties![n]!}
            value={values[n] ?? ""}
            idPrefix="captioning"
            onChange={(k, v) => setValues((old) => ({ ...old, [k]: v }))}
          />
        ))}
      </div>
      <ErrorNote error={error} />
      <button type="submit" disabled={busy}>
        Start captioning job
      </button>
      <p class="muted small">The result becomes the dataset&apos;s next caption revision.</p>
    </form>
  );
}

export function DatasetPage({ id }: { id: string }) {
  const [dataset, setDataset] = useState<Dataset | null>(null);
  const [captions, setCaptions] = useState<{
    revision: number;
    items: Caption[];
    source?: string | null;
    captioner?: Record<string, unknown> | null;
  } | null>(null);
  const [viewRevision, setViewRevision] = useState<number | null>(null);
  const [tags, setTags] = useState<TagCount[]>([]);
  const [error, setError] = useState<unknown>(null);
  const [editError, setEditError] = useState<unknown>(null);
  const [notice, setNotice] = useState("");
  const [find, setFind] = useState("");
  const [replace, setReplace] = useState("");
  const [regex, setRegex] = useState(false);
  const [addTag, setAddTag] = useState("");
  const [addPosition, setAddPosition] = useState<"start" | "end">("end");

  async function load(revision: number | null) {
    try {
      const ds = unwrap(await api.GET("/v1/datasets/{dataset_id}", { params: { path: { dataset_id: id } } }));
      const caps = unwrap(
        await api.GET("/v1/datasets/{dataset_id}/captions", {
          params: { path: { dataset_id: id }, query: revision === null ? {} : { revision } },
        }),
      );
      const tagList = unwrap(await api.GET("/v1/datasets/{dataset_id}/tags", { params: { path: { dataset_id: id } } }));
      setDataset(ds);
      setCaptions({ revision: caps.revision, items: caps.captions, source: caps.source, captioner: caps.captioner });
      setTags(tagList);
      setError(null);
    } catch (e) {
      setError(e);
    }
  }
  useEffect(() => void load(viewRevision), [id, viewRevision]);

  const byImage = useMemo(() => new Map((captions?.items ?? []).map((c) => [c.image_id, c.caption])), [captions]);
  if (error && !dataset) return <ErrorNote error={error} />;
  if (!dataset || !captions) return <p aria-live="polite">Loading dataset…</p>;
  const current = dataset.caption_revision;
  const readOnly = captions.revision !== current;

  async function edit(body: Partial<Schemas["CaptionEdit"]>, what: string) {
    setEditError(null);
    try {
      const result = unwrap(
        await api.PUT("/v1/datasets/{dataset_id}/captions", {
          params: { path: { dataset_id: id } },
          body: { expected_revision: current, ...body } as Schemas["CaptionEdit"],
        }),
      );
      setViewRevision(null);
      await load(null); // the page holds the new revision before it says so: a next edit expects it
      setNotice(`${what}: revision ${result.revision}, ${result.changed} caption(s) changed.`);
    } catch (e) {
      setEditError(e);
    }
  }

  return (
    <>
      <div class="page-head">
        <h1>{dataset.name}</h1>
        <a class="button" href={href({ page: "train", datasetId: dataset.id })}>
          Train on this dataset
        </a>
      </div>
      <IntakeReport dataset={dataset} />
      <Section title="Captions" id="captions">
        <div class="filters">
          <label for="revision">Revision</label>
          <select
            id="revision"
            value={String(captions.revision)}
            onChange={(e) => {
              const r = Number(e.currentTarget.value);
              setViewRevision(r === current ? null : r);
            }}
          >
            {Array.from({ length: current + 1 }, (_, r) => current - r).map((r) => (
              <option value={String(r)}>
                {r}
                {r === current ? " (current)" : ""}
                {r === 0 ? " (as uploaded)" : ""}
              </option>
            ))}
          </select>
          <span class="muted" data-testid="revision-captioner">
            {captionerText(captions.source, captions.captioner)}
          </span>
          {readOnly && (
            <>
              <span class="muted">Viewing revision {captions.revision} (read only).</span>
              <button
                type="button"
                onClick={() =>
                  void edit(
                    { set: captions.items.map((c) => ({ image_id: c.image_id, caption: c.caption })) },
                    `Restored revision ${captions.revision}`,
                  )
                }
              >
                Restore revision {captions.revision}
              </button>
            </>
          )}
        </div>
        <p class="notice" role="status" aria-live="polite">
          {notice}
        </p>
        <ErrorNote error={editError} />
        <ul class="caption-grid">
          {dataset.image_list.map((image) => (
            <CaptionCard
              key={`${image.id}-${captions.revision}`}
              image={image}
              caption={byImage.get(image.id) ?? null}
              emptyText={emptyCaptionText(image.subset, dataset.subsets as Subset[])}
              readOnly={readOnly}
              onSave={(imageId, caption) =>
                edit({ set: [{ image_id: imageId, caption }] }, `Saved the caption of ${image.path}`)
              }
            />
          ))}
        </ul>
      </Section>
      <div class="grid-2">
        <Section title="Find and replace" id="find">
          <form
            onSubmit={(e) => {
              e.preventDefault();
              if (find) void edit({ find_replace: [{ find, replace, regex }] }, `Replaced “${find}”`);
            }}
          >
            <label for="find">Find</label>
            <input id="find" type="text" value={find} onInput={(e) => setFind(e.currentTarget.value)} required />
            <label for="replace">Replace with</label>
            <input id="replace" type="text" value={replace} onInput={(e) => setReplace(e.currentTarget.value)} />
            <label class="checkbox">
              <input type="checkbox" checked={regex} onChange={(e) => setRegex(e.currentTarget.checked)} /> Regular
              expression
            </label>
            <button type="submit" disabled={readOnly || !find}>
              Replace in every caption
            </button>
          </form>
          <form
            onSubmit={(e) => {
              e.preventDefault();
              const tag = addTag.trim();
              if (tag) void edit({ add_tags: [tag], add_position: addPosition }, `Added “${tag}”`);
            }}
          >
            <label for="add-tag">Add a tag to every caption</label>
            <input id="add-tag" type="text" value={addTag} onInput={(e) => setAddTag(e.currentTarget.value)} required />
            <label for="add-position">Where</label>
            <select id="add-position" value={addPosition} onChange={(e) => setAddPosition(e.currentTarget.value as "start" | "end")}>
              <option value="end">at the end</option>
              <option value="start">at the start</option>
            </select>
            <button type="submit" disabled={readOnly || !addTag.trim()}>
              Add tag
            </button>
          </form>
        </Section>
        <Section title="Tag frequency" id="tags">
          {tags.length ? (
            <table class="list compact">
              <caption class="visually-hidden">Tags of the current revision and how many captions hold them</caption>
              <thead>
                <tr>
                  <th scope="col">Tag</th>
                  <th scope="col">Captions</th>
                  <th scope="col">
                    <span class="visually-hidden">Actions</span>
                  </th>
                </tr>
              </thead>
              <tbody>
                {tags.map((t) => (
                  <tr>
                    <td>{t.tag}</td>
                    <td>{t.count}</td>
                    <td>
                      <button
                        type="button"
                        class="secondary small"
                        disabled={readOnly}
                        aria-label={`Remove tag ${t.tag} from every caption`}
                        onClick={() => void edit({ remove_tags: [t.tag] }, `Removed “${t.tag}”`)}
                      >
                        Remove everywhere
                      </button>
                    </td>
                  </tr>
                ))}
              </tbody>
            </table>
          ) : (
            <p class="muted">No tags yet.</p>
          )}
        </Section>
      </div>
      <Section title="Caption automatically" id="captioning">
        <CaptioningForm dataset={dataset} />
      </Section>
    </>
  );
}
