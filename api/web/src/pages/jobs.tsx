import { useEffect, useState } from "preact/hooks";
import { api, formatTime, JOB_STATUSES, type Job, type JobStatus, unwrap } from "../api";
import { ErrorNote, ProgressBar, StatusBadge } from "../components";
import { href } from "../router";
import { jobTitle } from "./job";

export function JobsPage() {
  const [status, setStatus] = useState<JobStatus | "">("");
  const [items, setItems] = useState<Job[]>([]);
  const [cursor, setCursor] = useState<string | null>(null);
  const [error, setError] = useState<unknown>(null);
  const [loading, setLoading] = useState(true);

  async function load(after: string | null) {
    setLoading(true);
    try {
      const page = unwrap(
        await api.GET("/v1/jobs", {
          params: { query: { limit: 25, status: status || null, cursor: after } },
        }),
      );
      setItems((old) => (after ? [...old, ...page.items] : page.items));
      setCursor(page.next_cursor);
      setError(null);
    } catch (e) {
      setError(e);
    } finally {
      setLoading(false);
    }
  }

  useEffect(() => {
    void load(null);
  }, [status]);

  return (
    <>
      <div class="page-head">
        <h1>Jobs</h1>
        <a class="button" href={href({ page: "train", datasetId: null })}>
          New training
        </a>
      </div>
      <div class="filters">
        <label for="job-status">Status</label>
        <select id="job-status" value={status} onChange={(e) => setStatus(e.currentTarget.value as JobStatus | "")}>
          <option value="">all</option>
          {JOB_STATUSES.map((s) => (
            <option value={s}>{s}</option>
          ))}
        </select>
        <button type="button" class="secondary" onClick={() => void load(null)}>
          Refresh
        </button>
      </div>
      <ErrorNote error={error} />
      <table class="list">
        <caption class="visually-hidden">Jobs, newest first</caption>
        <thead>
          <tr>
            <th scope="col">Job</th>
            <th scope="col">Kind</th>
            <th scope="col">Status</th>
            <th scope="col">Progress</th>
            <th scope="col">Created</th>
          </tr>
        </thead>
        <tbody>
          {items.map((job) => (
            <tr>
              <td>
                <a href={href({ page: "job", id: job.id })}>
                  {job.kind === "train" || job.kind === "caption" ? String((job.config as Record<string, unknown>)["output_name"] ?? job.id.slice(0, 8)) : jobTitle(job)}
                </a>{" "}
                <span class="muted mono">{job.id.slice(0, 8)}</span>
              </td>
              <td>{job.kind}</td>
              <td>
                <StatusBadge status={job.status} />
              </td>
              <td class="progress-cell">
                <ProgressBar value={job.progress.step} max={job.progress.total_steps} label={`progress of job ${job.id}`} />
              </td>
              <td>{formatTime(job.created_at)}</td>
            </tr>
          ))}
        </tbody>
      </table>
      {!loading && !items.length && <p class="muted">No jobs{status ? ` with status ${status}` : ""} yet.</p>}
      {cursor && (
        <button type="button" class="secondary" onClick={() => void load(cursor)} disabled={loading}>
          Load older jobs
        </button>
      )}
    </>
  );
}
