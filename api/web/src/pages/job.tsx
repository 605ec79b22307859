import { useEffect, useRef, useState } from "preact/hooks";
import {
  api,
  type Artifact,
  downloadFile,
  followEvents,
  formatBytes,
  formatDuration,
  formatTime,
  type Job,
  TERMINAL,
  unwrap,
} from "../api";
import { AuthImage, ErrorNote, LossChart, ProgressBar, Section, StatusBadge } from "../components";
import { href } from "../router";
import { CompareSection, ComparisonJobView, epochFiles, PreviewSection } from "./previews";
import type { Estimate } from "./train-plan";

type LivePoint = { step: number; loss: number };

function Artifacts({ job, artifacts }: { job: Job; artifacts: Artifact[] }) {
  const [error, setError] = useState<unknown>(null);
  const [busy, setBusy] = useState<string | null>(null);
  const files = artifacts.filter((a) => a.kind !== "sample");
  return (
    <Section title="Files" id="files">
      <ErrorNote error={error} />
      {files.length ? (
        <table class="list">
          <caption class="visually-hidden">The job&apos;s files, one LoRA per saved epoch</caption>
          <thead>
            <tr>
              <th scope="col">File</th>
              <th scope="col">Epoch</th>
              <th scope="col">Step</th>
              <th scope="col">Size</th>
              <th scope="col">sha256</th>
              <th scope="col">
                <span class="visually-hidden">Download</span>
              </th>
            </tr>
          </thead>
          <tbody>
            {files.map((a) => (
              <tr data-artifact={a.name}>
                <td class="mono">
                  {a.name}
                  {a.is_final ? <span class="badge badge-succeeded">final</span> : null}
                  {a.kind !== "lora" ? <span class="muted"> ({a.kind})</span> : null}
                </td>
                <td>{a.epoch ?? "—"}</td>
                <td>{a.step ?? "—"}</td>
                <td>{formatBytes(a.size_bytes)}</td>
                <td class="mono sha" title={a.sha256}>
                  <span class="visually-hidden">sha256 </span>
                  {a.sha256}
                </td>
                <td>
                  <button
                    type="button"
                    disabled={busy === a.id}
                    aria-label={`Download ${a.name}`}
                    onClick={async () => {
                      setBusy(a.id);
                      setError(null);
                      try {
                        await downloadFile(a.download_url, a.name);
                      } catch (e) {
                        setError(e);
                      } finally {
                        setBusy(null);
                      }
                    }}
                  >
                    {busy === a.id ? "Downloading…" : "Download"}
                  </button>
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      ) : (
        <p class="muted">{TERMINAL.includes(job.status) ? "No files were saved." : "Each saved epoch's file appears here as soon as it is uploaded."}</p>
      )}
    </Section>
  );
}

export function jobTitle(job: Job): string {
  const name = String((job.config as Record<string, unknown>)["output_name"] ?? "");
  if (job.kind === "train") return name || "lora";
  if (job.kind === "compare") return `${name || "lora"} comparison`;
  if (job.kind === "generate") return "preview";
  return `${job.kind} job`;
}

function Images({ artifacts }: { artifacts: Artifact[] }) {
  const images = artifacts.filter((a) => a.kind === "image");
  if (!images.length) return null;
  return (
    <Section title="Image" id="images">
      <ul class="sample-grid">
        {images.map((a) => (
          <li>
            <figure>
              <AuthImage path={a.download_url} alt={`image ${a.name}`} />
              <figcaption class="small">{String((a.meta ?? {})["prompt"] ?? a.name)}</figcaption>
            </figure>
          </li>
        ))}
      </ul>
    </Section>
  );
}

function Samples({ artifacts }: { artifacts: Artifact[] }) {
  const samples = artifacts.filter((a) => a.kind === "sample");
  if (!samples.length) return null;
  const epochs = [...new Set(samples.map((s) => s.epoch ?? 0))].sort((a, b) => a - b);
  return (
    <Section title="Samples" id="samples">
      {epochs.map((epoch) => (
        <div class="sample-epoch">
          <h3>{epoch ? `Epoch ${epoch}` : "Before training"}</h3>
          <ul class="sample-grid">
            {samples
              .filter((s) => (s.epoch ?? 0) === epoch)
              .map((s) => {
                const meta = (s.meta ?? {}) as Record<string, unknown>;
                return (
                  <li>
                    <figure>
                      <AuthImage path={s.download_url} alt={`sample of epoch ${epoch}: ${String(meta["prompt"] ?? s.name)}`} />
                      <figcaption class="small">
                        {String(meta["prompt"] ?? s.name)}
                        <span class="muted">
                          {" "}
                          · seed {String(meta["seed"] ?? "?")} · step {s.step ?? "?"}
                        </span>
                      </figcaption>
                    </figure>
                  </li>
                );
              })}
          </ul>
        </div>
      ))}
    </Section>
  );
}

export function JobPage({ id }: { id: string }) {
  const [job, setJob] = useState<Job | null>(null);
  const [artifacts, setArtifacts] = useState<Artifact[]>([]);
  const [stage, setStage] = useState<string | null>(null);
  const [loss, setLoss] = useState<LivePoint[]>([]);
  const [error, setError] = useState<unknown>(null);
  const [cancelError, setCancelError] = useState<unknown>(null);
  const [live, setLive] = useState(false);
  const over = useRef(false);

  async function refresh() {
    try {
      const [j, a] = await Promise.all([
        api.GET("/v1/jobs/{job_id}", { params: { path: { job_id: id } } }).then(unwrap),
        api.GET("/v1/jobs/{job_id}/artifacts", { params: { path: { job_id: id } } }).then(unwrap),
      ]);
      over.current = TERMINAL.includes(j.status);
      setJob(j);
      setArtifacts(a);
      setError(null);
    } catch (e) {
      setError(e);
    }
  }

  useEffect(() => {
    const abort = new AbortController();
    void refresh().then(() => {
      setLive(true);
      void followEvents(
        id,
        (event) => {
          if (event.type === "progress") {
            const d = event.data as Partial<Job["progress"]>;
            setJob((old) => (old ? { ...old, progress: { ...old.progress, ...d } as Job["progress"] } : old));
            if (typeof d.loss === "number" && typeof d.step === "number") {
              const point = { step: d.step, loss: d.loss };
              setLoss((old) => (old.length && old[old.length - 1]!.step >= point.step ? old : [...old, point]));
            }
          } else if (event.type === "stage") {
            setStage(String(event.data["stage"] ?? ""));
          } else if (event.type === "status") {
            const status = String(event.data["status"] ?? "");
            if (TERMINAL.includes(status)) over.current = true;
            setJob((old) => (old ? { ...old, status: status as Job["status"] } : old));
            void refresh();
          } else if (event.type === "artifact" || event.type === "artifact_removed") {
            void refresh();
          }
        },
        abort.signal,
        () => over.current,
      ).finally(() => {
        setLive(false);
        void refresh();
      });
    });
    return () => abort.abort();
  }, [id]);

  if (!job) return error ? <ErrorNote error={error} /> : <p aria-live="polite">Loading job…</p>;
  const p = job.progress;
  const finished = TERMINAL.includes(job.status);
  const plan = job.plan as { steps_per_epoch?: number; total_steps?: number; saved_epochs?: number[] };

  return (
    <>
      <div class="page-head">
        <h1>
          {jobTitle(job)} <span class="muted mono small">{job.id}</span>
        </h1>
        {!finished && (
          <button
            type="button"
            class="danger"
            disabled={job.cancel_requested}
            onClick={async () => {
              setCancelError(null);
              const r = await api.POST("/v1/jobs/{job_id}/cancel", { params: { path: { job_id: id } } });
              if (r.error) setCancelError(r.error);
              void refresh();
            }}
          >
            {job.cancel_requested ? "Cancel requested…" : "Cancel job"}
          </button>
        )}
      </div>
      <ErrorNote error={cancelError} />
      <Section title="Status" id="status">
        <dl class="stats">
          <div>
            <dt>Status</dt>
            <dd data-testid="job-status">
              <StatusBadge status={job.status} />
            </dd>
          </div>
          <div>
            <dt>Stage</dt>
            <dd data-testid="job-stage">{finished ? "—" : stage ?? "—"}</dd>
          </div>
          <div>
            <dt>Step</dt>
            <dd data-testid="job-step">
              {p.step} / {p.total_steps}
            </dd>
          </div>
          {job.kind === "train" && (
            <div>
              <dt>Epoch</dt>
              <dd>
                {p.epoch} / {p.total_epochs}
              </dd>
            </div>
          )}
          <div>
            <dt>Loss</dt>
            <dd>{typeof p.loss === "number" ? p.loss.toFixed(4) : "—"}</dd>
          </div>
          <div>
            <dt>ETA</dt>
            <dd data-testid="job-eta">{finished ? "done" : formatDuration(p.eta_seconds)}</dd>
          </div>
          <div>
            <dt>Speed</dt>
            <dd>{typeof p.steps_per_second === "number" ? `${p.steps_per_second.toFixed(2)} steps/s` : "—"}</dd>
          </div>
          <div>
            <dt>Kind</dt>
            <dd>{job.kind}</dd>
          </div>
        </dl>
        <ProgressBar value={p.step} max={p.total_steps} label={job.kind === "train" ? "training progress" : "progress"} />
        <p class="muted small">
          {live ? "Live: following the job's event stream." : finished ? "Finished." : "Reconnecting to the event stream…"}{" "}
          Created {formatTime(job.created_at)}
          {job.started_at ? ` · started ${formatTime(job.started_at)}` : ""}
          {job.finished_at ? ` · finished ${formatTime(job.finished_at)}` : ""}
          {job.queue_position ? ` · position ${job.queue_position} in the queue` : ""}
          {job.status === "queued" && typeof job.estimated_start_seconds === "number"
            ? ` · expected to start in ${formatDuration(job.estimated_start_seconds)}`
            : ""}
          {job.status === "queued" && typeof (job.plan as { estimate?: Estimate }).estimate?.seconds === "number"
            ? ` · expected to take ${formatDuration((job.plan as { estimate?: Estimate }).estimate?.seconds)}`
            : ""}
          {job.attempts > 1 ? ` · attempt ${job.attempts}` : ""}
          {job.expired_at
            ? ` · its files were deleted ${formatTime(job.expired_at)} (retention)`
            : job.expires_at
              ? ` · files kept until ${formatTime(job.expires_at)}`
              : ""}
        </p>
        {job.error && <ErrorNote error={job.error} />}
        {job.dataset_id && (
          <p class="small">
            Dataset <a href={href({ page: "dataset", id: job.dataset_id })}>{job.dataset_id.slice(0, 8)}</a>
            {job.caption_revision !== null ? `, caption revision ${job.caption_revision}` : ""}
            {plan.total_steps ? ` · plan: ${plan.steps_per_epoch} steps per epoch, ${plan.total_steps} in all` : ""}
          </p>
        )}
      </Section>
      {job.kind === "train" && (
        <Section title="Loss" id="loss">
          <LossChart points={loss} />
        </Section>
      )}
      <Artifacts job={job} artifacts={artifacts} />
      <Samples artifacts={artifacts} />
      {job.kind === "train" && finished && epochFiles(job, artifacts).size > 0 && (
        <>
          <CompareSection job={job} artifacts={artifacts} />
          <PreviewSection job={job} artifacts={artifacts} />
        </>
      )}
      {job.kind === "compare" && finished && <ComparisonJobView id={job.id} />}
      {job.kind === "generate" && <Images artifacts={artifacts} />}
      <details class="card">
        <summary>Config</summary>
        <pre class="config">{JSON.stringify(job.config, null, 2)}</pre>
      </details>
    </>
  );
}
