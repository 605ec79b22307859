// "Import a kohya_ss config": the JSON the kohya_ss GUI saves, through POST /v1/configs/kohya, fills the
// training form; what has no equivalent is listed.
import { useState } from "preact/hooks";
import { api, type Schemas, unwrap } from "../api";
import { ErrorNote } from "../components";

export function KohyaImport({ onImported }: { onImported: (config: Record<string, unknown>) => void }) {
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
