/**
 * Submit a LoRA training job, watch it, download its LoRAs: lorabake's API through the types that
 * openapi-typescript generates from /openapi.json, and openapi-fetch (docs/typescript.md).
 *
 * CI only type-checks this file (tests/test_typescript_client.py, `tsc --noEmit`), never runs it: it is
 * here so that a schema change that would break a TypeScript client (a renamed field, a changed type, a
 * path that went away) fails the build. So it reads the generated types wherever the API is described
 * and declares nothing the schema could say instead.
 *
 *   LORABAKE_URL=http://127.0.0.1:8000 LORABAKE_KEY=lb_... node example.ts dataset.zip [OUT_DIR]
 *   LORABAKE_URL=... LORABAKE_KEY=... node example.ts DATASET_ID [OUT_DIR]   (a stored dataset)
 */
import { createHash, randomUUID } from "node:crypto";
import { createWriteStream, openAsBlob } from "node:fs";
import { mkdir } from "node:fs/promises";
import { basename, join } from "node:path";
import { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { setTimeout as sleep } from "node:timers/promises";

import createClient from "openapi-fetch";

import type { components, paths } from "./generated/schema.js";

type Schemas = components["schemas"];
type Job = Schemas["JobOut"];
type JobForm = paths["/v1/jobs"]["post"]["requestBody"]["content"]["multipart/form-data"];
type JobJson = paths["/v1/jobs"]["post"]["requestBody"]["content"]["application/json"];

// The job statuses from the schema's enum: a status renamed there fails to compile here.
const ENDED: ReadonlySet<Schemas["JobStatus"]> = new Set<Schemas["JobStatus"]>([
  "succeeded",
  "failed",
  "canceled",
]);

// The fields of the schema's TrainingConfig that this program sets, typed as the schema types them (a field
// renamed there fails to compile here). Every other field has a server-side default, which the generated
// type nonetheless marks as required (openapi-typescript's --default-non-nullable, on by default).
type TrainingConfig = Pick<Schemas["TrainingConfig"], "base_model"> &
  Partial<Pick<Schemas["TrainingConfig"], "preset" | "trigger_word" | "epochs">>;

const key = process.env["LORABAKE_KEY"];
if (!key) throw new Error("set LORABAKE_KEY to an API key (`lorabake create-key`)");
const client = createClient<paths>({
  baseUrl: process.env["LORABAKE_URL"] ?? "http://127.0.0.1:8000",
  headers: { Authorization: `Bearer ${key}` },
});

/** Every error leaves the API as {"error": {code, message, details}}: taking that type here checks that each
 * operation this program calls documents its errors with it. */
function fail(what: string, error: Schemas["ErrorResponse"], response: Response): never {
  throw new Error(`${what}: HTTP ${response.status} ${error.error.code}: ${error.error.message}`);
}

/** An answer worth sending the same request again for: an outage (503) or, with an Idempotency-Key, a first
 * request still running (409 `idempotency_key_in_use`); both say when in Retry-After. */
class TryAgain extends Error {
  readonly seconds: number;
  constructor(message: string, seconds: number) {
    super(message);
    this.seconds = seconds;
  }
}

function failOrRetry(what: string, error: Schemas["ErrorResponse"], response: Response): never {
  if (response.status === 503 || error.error.code === "idempotency_key_in_use") {
    throw new TryAgain(`${what}: ${error.error.code}`, Number(response.headers.get("Retry-After") ?? 1));
  }
  fail(what, error, response);
}

/** Sends a creating request with one Idempotency-Key, and that same key again after a lost connection (fetch
 * throws a TypeError), a 503 or a 409 `idempotency_key_in_use`: the server answers a repeat with the first
 * answer, so a retry never queues a second job. */
async function idempotently<T>(send: (idempotencyKey: string) => Promise<T>, tries = 3): Promise<T> {
  const idempotencyKey = randomUUID();
  for (let attempt = 1; ; attempt++) {
    try {
      return await send(idempotencyKey);
    } catch (failure) {
      const retried = failure instanceof TryAgain || failure instanceof TypeError;
      if (!retried || attempt >= tries) throw failure;
      await sleep(1000 * (failure instanceof TryAgain ? Math.min(failure.seconds, 30) : 1));
    }
  }
}

/** A base model the workers have, by the name `config.base_model` takes. */
async function pickModel(): Promise<string> {
  const { data, error, response } = await client.GET("/v1/models");
  if (error) fail("list models", error, response);
  const model = data.items.find((m) => m.workers_online > 0) ?? data.items[0];
  if (!model) throw new Error("no worker has reported a base model yet");
  // family is null for a .ckpt until a job loads it
  console.log(`base model ${model.name}: ${model.family ?? "family not known yet"}, ${model.kind}`);
  return model.name;
}

/** Multipart: the zip as `dataset` and the config as JSON text. */
async function submitZip(zipPath: string, config: TrainingConfig, idempotencyKey: string): Promise<Job> {
  const zip = await openAsBlob(zipPath, { type: "application/zip" });
  const fields: JobForm = { config: JSON.stringify(config) };
  const { data, error, response } = await client.POST("/v1/jobs", {
    params: { header: { "Idempotency-Key": idempotencyKey } }, // the header's name, checked by the schema
    body: fields,
    bodySerializer() {
      // field names checked against the schema's form; `dataset` is `format: binary`, which
      // openapi-typescript types as a string, so the file goes in here rather than in `fields`
      const form = new FormData();
      form.append("config" satisfies keyof JobForm, fields.config);
      form.append("dataset" satisfies keyof JobForm, zip, basename(zipPath));
      return form; // openapi-fetch leaves Content-Type to fetch, which adds the multipart boundary
    },
  });
  if (error) failOrRetry("submit", error, response);
  return data;
}

/** JSON: a dataset stored before (POST /v1/datasets), the config as an object; openapi-fetch sends a plain
 * object as application/json. The body is the schema's JobJsonBody, but for the defaulted fields (see
 * TrainingConfig above) this program leaves to the server. */
async function submitStored(datasetId: string, config: TrainingConfig, idempotencyKey: string): Promise<Job> {
  const body: Pick<JobJson, "dataset_id"> & { config: TrainingConfig } = { dataset_id: datasetId, config };
  const { data, error, response } = await client.POST("/v1/jobs", {
    params: { header: { "Idempotency-Key": idempotencyKey } },
    body: body as JobJson, // the defaulted fields, left out, are the server's to fill
  });
  if (error) failOrRetry("submit", error, response);
  return data;
}

async function getJob(jobId: string): Promise<Job> {
  const { data, error, response } = await client.GET("/v1/jobs/{job_id}", {
    params: { path: { job_id: jobId } },
  });
  if (error) fail("get job", error, response);
  return data;
}

function report(job: Job): void {
  const p = job.progress;
  const loss = p.loss === null ? "" : `, loss ${p.loss.toFixed(4)}`;
  const eta = p.eta_seconds === null ? "" : `, ${Math.round(p.eta_seconds)} s left`;
  const where = `epoch ${p.epoch}/${p.total_epochs}, step ${p.step}/${p.total_steps}`;
  console.log(`${job.status}: ${where} (${p.percent}%)${loss}${eta}`);
}

interface ServerSentEvent {
  id: number | undefined;
  type: string;
  data: string;
}

/** The events of a text/event-stream body (the subset of the format the API sends: id, event, data, and
 * comment lines as keep-alives). */
async function* serverSentEvents(body: ReadableStream<Uint8Array>): AsyncGenerator<ServerSentEvent> {
  let buffer = "";
  const decoder = new TextDecoder();
  for await (const chunk of body) {
    buffer += decoder.decode(chunk, { stream: true });
    let end: number;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const event: ServerSentEvent = { id: undefined, type: "message", data: "" };
      for (const line of block.split("\n")) {
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (field === "id") event.id = Number(value);
        else if (field === "event") event.type = value;
        else if (field === "data") event.data += value;
      }
      if (!block.startsWith(":")) yield event;
    }
  }
}

// JobOut.status is the schema's JobStatus enum, as ENDED's members are
const ended = (job: Job): boolean => ENDED.has(job.status);

/** Follows the job's events until it ends, resuming after the last event seen when the stream drops; the job
 * itself (typed) is read again on each status or progress event. Polling would do as well: GET the job every
 * few seconds until its status is one of ENDED. */
async function watch(jobId: string): Promise<Job> {
  let after = 0;
  for (;;) {
    const job = await getJob(jobId);
    report(job);
    if (ended(job)) return job;
    const { data: stream, error, response } = await client.GET("/v1/jobs/{job_id}/events", {
      params: { path: { job_id: jobId }, query: { after } },
      parseAs: "stream", // server-sent events, not JSON
    });
    if (error) fail("follow events", error, response);
    if (!stream) throw new Error("the event stream has no body");
    try {
      for await (const event of serverSentEvents(stream)) {
        after = event.id ?? after;
        if (event.type === "status" || event.type === "progress") report(await getJob(jobId));
        else console.log(`${event.type}: ${event.data}`);
      }
    } catch (dropped) {
      console.log(`event stream dropped (${String(dropped)}); resuming after event ${after}`);
    }
    await sleep(1000); // the stream ended (the job did, or the connection): look again, never in a tight loop
  }
}

/** Each LoRA the job saved (one per saved epoch), checked against its sha256, into `dir`. */
async function downloadLoras(job: Job, dir: string): Promise<void> {
  const listed = await client.GET("/v1/jobs/{job_id}/artifacts", { params: { path: { job_id: job.id } } });
  if (listed.error) fail("list artifacts", listed.error, listed.response);
  await mkdir(dir, { recursive: true });
  for (const artifact of listed.data.filter((a) => a.kind === "lora")) {
    // artifact.download_url is this path: a 307 to presigned storage (S3), which fetch follows without
    // the Authorization header (another origin), or the file itself (embedded mode)
    const { data: body, error, response } = await client.GET("/v1/jobs/{job_id}/artifacts/{artifact_id}", {
      params: { path: { job_id: job.id, artifact_id: artifact.id } },
      parseAs: "stream",
    });
    if (error) fail(`download ${artifact.name}`, error, response);
    if (!body) throw new Error(`${artifact.name}: the download has no body`);
    const hash = createHash("sha256");
    const path = join(dir, basename(artifact.name));
    await pipeline(
      Readable.fromWeb(body),
      async function* (chunks: AsyncIterable<Buffer>) {
        for await (const chunk of chunks) {
          hash.update(chunk);
          yield chunk;
        }
      },
      createWriteStream(path),
    );
    const digest = hash.digest("hex");
    if (digest !== artifact.sha256) {
      throw new Error(`${artifact.name}: sha256 ${digest}, expected ${artifact.sha256}`);
    }
    const epoch = artifact.epoch === null ? "" : ` epoch ${artifact.epoch}`;
    console.log(`${path}:${epoch} ${artifact.size_bytes} bytes${artifact.is_final ? " (final)" : ""}`);
  }
}

const [source, outDir = "loras"] = process.argv.slice(2);
if (!source) throw new Error("usage: example.ts DATASET.zip|DATASET_ID [OUT_DIR]");
const config: TrainingConfig = { base_model: await pickModel(), preset: "character", trigger_word: "sks" };
const submitted = await idempotently((idempotencyKey) =>
  source.endsWith(".zip")
    ? submitZip(source, config, idempotencyKey)
    : submitStored(source, config, idempotencyKey),
);
console.log(`job ${submitted.id} queued: ${submitted.progress.total_steps} steps planned`);
const done = await watch(submitted.id);
if (done.status !== "succeeded") {
  throw new Error(`job ${done.id} ${done.status}: ${done.error?.message ?? "canceled"}`);
}
await downloadLoras(done, outDir);
