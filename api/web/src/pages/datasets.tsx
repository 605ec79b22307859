import { useEffect, useState } from "preact/hooks";
import { api, type DatasetSummary, formatBytes, formatTime, type UploadRoute, unwrap, uploadDataset } from "../api";
import { ErrorNote, ProgressBar } from "../components";
import { href, navigate } from "../router";

function UploadForm() {
  const [file, setFile] = useState<File | null>(null);
  const [name, setName] = useState("");
  const [sent, setSent] = useState<{ loaded: number; total: number } | null>(null);
  const [route, setRoute] = useState<UploadRoute | null>(null);
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<unknown>(null);

  async function submit(e: Event) {
    e.preventDefault();
    if (!file) return;
    setBusy(true);
    setError(null);
    setSent({ loaded: 0, total: file.size });
    try {
      const dataset = await uploadDataset(
        file,
        name.trim(),
        (loaded, total) => setSent({ loaded, total }),
        setRoute,
      );
      navigate({ page: "dataset", id: dataset.id });
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  }

  return (
    <form class="card" onSubmit={submit} aria-labelledby="upload-title">
      <h2 id="upload-title">Upload a dataset</h2>
      <p class="muted">
        A zip in Kohya&apos;s layout (<code>img/6_trigger class/…</code>, captions as same-name <code>.txt</code>,
        optional <code>reg/1_class/</code>) or a flat folder of images with <code>.txt</code> captions.
      </p>
      <div class="grid-2">
        <div>
          <label for="dataset-file">Zip file</label>
          <input
            id="dataset-file"
            type="file"
            accept=".zip,application/zip"
            required
            onChange={(e) => setFile(e.currentTarget.files?.[0] ?? null)}
          />
        </div>
        <div>
          <label for="dataset-name">Name (optional)</label>
          <input id="dataset-name" type="text" value={name} onInput={(e) => setName(e.currentTarget.value)} />
        </div>
      </div>
      {sent && (
        <div class="upload-progress">
          <ProgressBar value={sent.loaded} max={sent.total} label="upload progress" />
          <span class="muted">
            {formatBytes(sent.loaded)} of {formatBytes(sent.total)}
            {route === "storage" ? " · straight to storage" : route === "api" ? " · through the API" : ""}
            {busy && sent.loaded >= sent.total ? " · checking the zip…" : ""}
          </span>
        </div>
      )}
      <ErrorNote error={error} />
      <button type="submit" disabled={busy || !file}>
        {busy ? "Uploading…" : "Upload"}
      </button>
    </form>
  );
}

export function DatasetsPage() {
  const [items, setItems] = useState<DatasetSummary[]>([]);
  const [cursor, setCursor] = useState<string | null>(null);
  const [error, setError] = useState<unknown>(null);
  const [loading, setLoading] = useState(true);

  async function load(after: string | null) {
    setLoading(true);
    try {
      const page = unwrap(await api.GET("/v1/datasets", { params: { query: { limit: 25, cursor: after } } }));
      setItems((old) => (after ? [...old, ...page.items] : page.items));
      setCursor(page.next_cursor);
      setError(null);
    } catch (e) {
      setError(e);
    } finally {
      setLoading(false);
    }
  }
  useEffect(() => void load(null), []);

  return (
    <>
      <h1>Datasets</h1>
      <UploadForm />
      <ErrorNote error={error} />
      <table class="list">
        <caption class="visually-hidden">Datasets, newest first</caption>
        <thead>
          <tr>
            <th scope="col">Name</th>
            <th scope="col">Images</th>
            <th scope="col">Regularization</th>
            <th scope="col">Caption revision</th>
            <th scope="col">Size</th>
            <th scope="col">Uploaded</th>
          </tr>
        </thead>
        <tbody>
          {items.map((d) => (
            <tr>
              <td>
                <a href={href({ page: "dataset", id: d.id })}>{d.name}</a>
              </td>
              <td>{d.images}</td>
              <td>{d.reg_images}</td>
              <td>{d.caption_revision}</td>
              <td>{formatBytes(d.bytes)}</td>
              <td>{formatTime(d.created_at)}</td>
            </tr>
          ))}
        </tbody>
      </table>
      {!loading && !items.length && <p class="muted">No datasets yet: upload a zip above.</p>}
      {cursor && (
        <button type="button" class="secondary" onClick={() => void load(cursor)} disabled={loading}>
          Load older datasets
        </button>
      )}
    </>
  );
}
