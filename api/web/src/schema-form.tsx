// Form fields generated from the API's own OpenAPI document (GET /openapi.json needs no key), so every field
// of TrainingConfig / CaptionConfig is on the page with its description, default and limits, and a field the
// server adds shows up without a change here.
import { useEffect, useState } from "preact/hooks";

export type JsonSchema = {
  type?: string | string[];
  title?: string;
  description?: string;
  default?: unknown;
  enum?: unknown[];
  const?: unknown;
  anyOf?: JsonSchema[];
  items?: JsonSchema;
  properties?: Record<string, JsonSchema>;
  required?: string[];
  minimum?: number;
  maximum?: number;
  multipleOf?: number;
  $ref?: string;
};

let documentPromise: Promise<Record<string, JsonSchema>> | null = null;

export function loadSchemas(): Promise<Record<string, JsonSchema>> {
  documentPromise ??= fetch("/openapi.json")
    .then((r) => {
      if (!r.ok) throw new Error(`/openapi.json: HTTP ${r.status}`);
      return r.json() as Promise<{ components: { schemas: Record<string, JsonSchema> } }>;
    })
    .then((doc) => doc.components.schemas)
    .catch((error: unknown) => {
      documentPromise = null;
      throw error;
    });
  return documentPromise;
}

export function useSchema(name: string): { schema: JsonSchema | null; error: unknown } {
  const [state, setState] = useState<{ schema: JsonSchema | null; error: unknown }>({ schema: null, error: null });
  useEffect(() => {
    loadSchemas()
      .then((all) => setState({ schema: all[name] ?? null, error: all[name] ? null : new Error(`no ${name}`) }))
      .catch((error: unknown) => setState({ schema: null, error }));
  }, [name]);
  return state;
}

export type Kind = "enum" | "boolean" | "integer" | "number" | "string" | "list" | "object" | "ref";

/** The field's kind and its choices, looking through `anyOf: [X, null]`. */
export function fieldKind(schema: JsonSchema): { kind: Kind; choices: string[]; nullable: boolean } {
  const options = schema.anyOf ?? [schema];
  const nullable = options.some((o) => o.type === "null");
  const main = options.find((o) => o.type !== "null") ?? schema;
  if (main.$ref) return { kind: "ref", choices: [], nullable };
  if (main.enum) return { kind: "enum", choices: main.enum.map(String), nullable };
  if (main.const !== undefined) return { kind: "enum", choices: [String(main.const)], nullable }; // Literal["raw"]
  const types = options.map((o) => o.type).filter((t): t is string => typeof t === "string" && t !== "null");
  if (types.includes("boolean")) return { kind: "boolean", choices: [], nullable };
  if (types.includes("number")) return { kind: "number", choices: [], nullable };
  if (types.includes("integer")) return { kind: "integer", choices: [], nullable };
  if (types.includes("array")) return { kind: "list", choices: [], nullable };
  if (types.includes("object")) return { kind: "object", choices: [], nullable };
  return { kind: "string", choices: [], nullable };
}

/** Kohya's name for a field: the one its description gives ("Kohya's max_train_epochs"), else its own. */
export function kohyaName(name: string, schema: JsonSchema): string {
  // only snake_case names: "Kohya's default" or "Kohya's networks.lora" name no field
  const match = /Kohya's ([a-z][a-z0-9]*(?:_[a-z0-9]+)+)\b(?![.])/.exec(schema.description ?? "");
  return match?.[1] ?? name;
}

export type FormValues = Record<string, string>;

function shown(value: unknown): string {
  if (value === null || value === undefined) return "";
  if (Array.isArray(value)) return value.map(String).join("\n");
  if (typeof value === "object") return JSON.stringify(value);
  return String(value);
}

/** Form text for a config value (the reverse of `parseValues`). */
export function valuesFrom(config: Record<string, unknown>, schema: JsonSchema): FormValues {
  const out: FormValues = {};
  for (const [name, value] of Object.entries(config)) {
    const field = schema.properties?.[name];
    if (!field || fieldKind(field).kind === "ref") continue;
    const kind = fieldKind(field).kind;
    out[name] = kind === "object" ? JSON.stringify(value, null, 0) : shown(value);
  }
  return out;
}

/** The config object for the filled-in fields (empty ones are left out: the server's default, or the preset's). */
export function parseValues(values: FormValues, schema: JsonSchema): { config: Record<string, unknown>; errors: Record<string, string> } {
  const config: Record<string, unknown> = {};
  const errors: Record<string, string> = {};
  for (const [name, raw] of Object.entries(values)) {
    const field = schema.properties?.[name];
    const text = raw.trim();
    if (!field || text === "") continue;
    const { kind } = fieldKind(field);
    if (kind === "boolean") config[name] = text === "true";
    else if (kind === "integer" || kind === "number") {
      const n = Number(text);
      if (!Number.isFinite(n)) errors[name] = "not a number";
      else config[name] = n;
    } else if (kind === "list") {
      config[name] = raw
        .split("\n")
        .map((line) => line.trim())
        .filter(Boolean);
    } else if (kind === "object") {
      try {
        config[name] = JSON.parse(text) as unknown;
      } catch {
        errors[name] = "not valid JSON";
      }
    } else config[name] = raw;
  }
  return { config, errors };
}

function defaultText(schema: JsonSchema): string {
  if (schema.default === undefined || schema.default === null) return "";
  if (Array.isArray(schema.default)) return schema.default.length ? schema.default.join(", ") : "";
  if (typeof schema.default === "object") return JSON.stringify(schema.default);
  return String(schema.default);
}

export function SchemaField({
  name,
  schema,
  value,
  hint,
  note,
  error,
  idPrefix,
  onChange,
}: {
  name: string;
  schema: JsonSchema;
  value: string;
  hint?: string | undefined;
  /** a line added to the description (what the field means for the chosen model family) */
  note?: string | undefined;
  error?: string | undefined;
  idPrefix: string;
  onChange: (name: string, value: string) => void;
}) {
  const id = `${idPrefix}-${name}`;
  const { kind, choices } = fieldKind(schema);
  const kohya = kohyaName(name, schema);
  const fallback = hint ?? defaultText(schema);
  const common = {
    id,
    name,
    "aria-describedby": error ? `${id}-error ${id}-help` : `${id}-help`,
    "aria-invalid": error ? true : undefined,
  };
  let input;
  if (kind === "enum" || kind === "boolean") {
    const options = kind === "boolean" ? ["true", "false"] : choices;
    input = (
      <select {...common} value={value} onChange={(e) => onChange(name, e.currentTarget.value)}>
        <option value="">{fallback ? `default (${fallback})` : "default"}</option>
        {options.map((c) => (
          <option value={c}>{c}</option>
        ))}
      </select>
    );
  } else if (kind === "list" || kind === "object") {
    input = (
      <textarea
        {...common}
        rows={kind === "list" ? 3 : 2}
        value={value}
        placeholder={kind === "list" ? "one per line" : fallback || "{}"}
        onInput={(e) => onChange(name, e.currentTarget.value)}
      />
    );
  } else {
    const numeric = kind === "integer" || kind === "number";
    const main = (schema.anyOf ?? [schema]).find((o) => o.type !== "null") ?? schema;
    input = (
      <input
        {...common}
        type={numeric ? "number" : "text"}
        step={kind === "integer" ? 1 : "any"}
        min={numeric ? main.minimum : undefined}
        max={numeric ? main.maximum : undefined}
        value={value}
        placeholder={fallback}
        onInput={(e) => onChange(name, e.currentTarget.value)}
      />
    );
  }
  return (
    <div class={`field${error ? " invalid" : ""}`}>
      <label for={id}>
        {schema.title ?? name} <code class="kohya" title="Kohya's name">{kohya}</code>
      </label>
      {input}
      {error ? (
        <p class="field-error" id={`${id}-error`} role="alert">
          {error}
        </p>
      ) : null}
      <small id={`${id}-help`} class="help">
        {schema.description ?? ""}
        {note ? <span class="family-note"> {note}</span> : null}
      </small>
    </div>
  );
}
