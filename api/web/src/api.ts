// The page talks only to the public API (/v1/...), with the key the user typed (kept in localStorage).
import createClient, { type Middleware } from "openapi-fetch";
import type { components, paths } from "./generated/schema";

export type Schemas = components["schemas"];
export type Job = Schemas["JobOut"];
export type Artifact = Schemas["ArtifactOut"];
export type Dataset = Schemas["DatasetOut"];
export type DatasetSummary = Schemas["DatasetSummary"];
export type JobStatus = Schemas["JobStatus"];
export type PlanOut = Schemas["PlanOut"];

const KEY_STORAGE = "lorabake.apiKey";

export function getKey(): string {
  return localStorage.getItem(KEY_STORAGE) ?? "";
}

export function setKey(key: string): void {
  if (key) localStorage.setItem(KEY_STORAGE, key);
  else localStorage.removeItem(KEY_STORAGE);
}

function authHeaders(): Record<string, string> {
  const key = getKey();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

const auth: Middleware = {
  onRequest({ request }) {
    const key = getKey();
    if (key) request.headers.set("Authorization", `Bearer ${key}`);
    return request;
  },
};

export const api = createClient<paths>({ baseUrl: window.location.origin });
api.use(auth);

/** Every API error is {"error": {"code", "message", "details"}}; anything else (a proxy's page) becomes one. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly details: Record<string, unknown> = {},
  ) {
    super(message);
  }
}

export function asApiError(error: unknown, status = 0): ApiError {
  if (error instanceof ApiError) return error;
  const body = (error as { error?: { code?: string; message?: string; details?: Record<string, unknown> } })
    ?.error;
  if (body && typeof body.message === "string") {
    return new ApiError(status, body.code ?? "error", body.message, body.details ?? {});
  }
  if (error instanceof Error) return new ApiError(status, "network_error", error.message);
  return new ApiError(status, "error", `request failed (HTTP ${status})`);
}

/** The data of an openapi-fetch answer, or throws its error as an ApiError. */
export function unwrap<T>(result: { data?: T; error?: unknown; response: Response }): T {
  if (result.error !== undefined || result.data === undefined) {
    throw asApiError(result.error, result.response.status);
  }
  return result.data;
}

/** GET an API path that answers bytes (a thumbnail, a sample, a LoRA file) with the key, as a Blob. */
export async function fetchBlob(path: string): Promise<Blob> {
  const response = await fetch(path, { headers: authHeaders() });
  if (!response.ok) {
    let body: unknown = null;
    try {
      body = await response.json();
    } catch {
      /* not JSON */
    }
    throw asApiError(body, response.status);
  }
  return response.blob();
}

/** Downloads an artifact with the key and hands it to the browser as a file named `name`. */
export async function downloadFile(path: string, name: string): Promise<void> {
  const blob = await fetchBlob(path);
  const url = URL.createObjectURL(blob);
  const link = document.createElement("a");
  link.href = url;
  link.download = name;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

export type Progress = (sent: number, total: number) => void;

/** A request with upload progress (fetch has none): resolves with the status and the parsed JSON body. */
function xhrSend(
  method: string,
  url: string,
  body: FormData | Blob,
  headers: Record<string, string>,
  onProgress: Progress,
): Promise<{ status: number; body: unknown }> {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open(method, url);
    for (const [name, value] of Object.entries(headers)) xhr.setRequestHeader(name, value);
    xhr.upload.onprogress = (e) => {
      if (e.lengthComputable) onProgress(e.loaded, e.total);
    };
    xhr.onload = () => {
      let parsed: unknown = null;
      try {
        parsed = xhr.responseText ? JSON.parse(xhr.responseText) : null;
      } catch {
        parsed = null;
      }
      resolve({ status: xhr.status, body: parsed });
    };
    xhr.onerror = () => reject(new ApiError(0, "network_error", `could not reach ${new URL(url).host}`));
    xhr.send(body);
  });
}

export type UploadRoute = "storage" | "api";

/**
 * Uploads a dataset zip: straight to storage through POST /v1/uploads' form where the deployment gives one
 * (then POST /v1/datasets names the upload), else as a multipart POST /v1/datasets through the API.
 */
export async function uploadDataset(
  file: File,
  name: string,
  onProgress: Progress,
  onRoute: (route: UploadRoute) => void,
): Promise<Dataset> {
  const options = name ? { name } : {};
  const upload = await api.POST("/v1/uploads", { body: { filename: file.name } });
  if (upload.data?.post) {
    const form = new FormData();
    for (const [field, value] of Object.entries(upload.data.post.fields)) form.append(field, String(value));
    form.append("file", file);
    onRoute("storage");
    let sent: { status: number; body: unknown } | null = null;
    try {
      sent = await xhrSend("POST", upload.data.post.url, form, {}, onProgress);
    } catch {
      sent = null; // storage is not reachable from this browser (CORS, a private host): go through the API
    }
    if (sent && sent.status >= 200 && sent.status < 300) {
      return unwrap(
        await api.POST("/v1/datasets", {
          body: { upload_id: upload.data.upload_id, options } as never,
        }),
      );
    }
    if (sent && sent.status >= 400 && sent.status < 500 && sent.status !== 403) {
      throw asApiError(sent.body, sent.status);
    }
  } else if (upload.error && [401, 403, 429].includes(upload.response.status)) {
    throw asApiError(upload.error, upload.response.status);
  }
  onRoute("api");
  const form = new FormData();
  form.append("options", JSON.stringify(options));
  form.append("dataset", file);
  const sent = await xhrSend("POST", "/v1/datasets", form, authHeaders(), onProgress);
  if (sent.status !== 201) throw asApiError(sent.body, sent.status);
  return sent.body as Dataset;
}

export type StreamEvent = { id: number; type: string; data: Record<string, unknown> };

/**
 * Follows GET /v1/jobs/{id}/events (server-sent events) with fetch, since EventSource cannot send the key;
 * reconnects with Last-Event-ID until the job ends or `signal` aborts.
 */
export async function followEvents(
  jobId: string,
  onEvent: (event: StreamEvent) => void,
  signal: AbortSignal,
  isOver: () => boolean,
): Promise<void> {
  let lastId = 0;
  while (!signal.aborted) {
    try {
      const headers: Record<string, string> = { ...authHeaders(), Accept: "text/event-stream" };
      if (lastId) headers["Last-Event-ID"] = String(lastId);
      const response = await fetch(`/v1/jobs/${encodeURIComponent(jobId)}/events`, { headers, signal });
      if (!response.ok || !response.body) throw new Error(`events: HTTP ${response.status}`);
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value.replace(/\r\n?/g, "\n");
        let cut: number;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          let id = 0;
          let type = "message";
          const data: string[] = [];
          for (const line of block.split("\n")) {
            if (line.startsWith(":")) continue;
            const colon = line.indexOf(":");
            const field = colon < 0 ? line : line.slice(0, colon);
            const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
            if (field === "id") id = Number(value);
            else if (field === "event") type = value;
            else if (field === "data") data.push(value);
          }
          if (!data.length) continue;
          if (id) lastId = id;
          try {
            onEvent({ id, type, data: JSON.parse(data.join("\n")) as Record<string, unknown> });
          } catch {
            /* a malformed event is skipped */
          }
        }
      }
      if (isOver()) return; // the stream ends when the job does
    } catch (error) {
      if (signal.aborted) return;
    }
    await new Promise((resolve) => setTimeout(resolve, 2000));
  }
}

export const TERMINAL: readonly string[] = ["succeeded", "failed", "canceled"];
export const JOB_STATUSES: readonly JobStatus[] = [
  "queued",
  "preparing",
  "training",
  "rendering",
  "uploading",
  "succeeded",
  "failed",
  "canceled",
];

/** "1 image", "4 images": a count with its noun, singular for exactly one. */
export function plural(n: number, noun: string, nouns = `${noun}s`): string {
  return `${n} ${n === 1 ? noun : nouns}`;
}

export function formatBytes(n: number): string {
  if (n < 1024) return `${n} B`;
  const units = ["KiB", "MiB", "GiB", "TiB"];
  let value = n / 1024;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${value.toFixed(value < 10 ? 1 : 0)} ${units[unit]}`;
}

export function formatDuration(seconds: number | null | undefined): string {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return "—";
  const s = Math.max(0, Math.round(seconds));
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const rest = s % 60;
  if (h) return `${h} h ${m} min`;
  if (m) return `${m} min ${rest} s`;
  return `${rest} s`;
}

export function formatTime(iso: string | null | undefined): string {
  if (!iso) return "—";
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? iso : date.toLocaleString();
}
