// Following one job (a comparison, a preview) from its own section of a page: the job and its artifacts,
// kept current by the job's event stream, as the job page follows its own job.
import { useEffect, useRef, useState } from "preact/hooks";
import { api, type Artifact, followEvents, type Job, TERMINAL, unwrap } from "./api";

export type Followed = {
  job: Job | null;
  artifacts: Artifact[];
  error: unknown;
  refresh: () => Promise<void>;
};

export function useFollowedJob(id: string | null): Followed {
  const [job, setJob] = useState<Job | null>(null);
  const [artifacts, setArtifacts] = useState<Artifact[]>([]);
  const [error, setError] = useState<unknown>(null);
  const refreshRef = useRef<() => Promise<void>>(async () => {});

  useEffect(() => {
    setJob(null);
    setArtifacts([]);
    setError(null);
    if (!id) {
      refreshRef.current = async () => {};
      return;
    }
    const abort = new AbortController();
    let over = false;
    const refresh = async () => {
      try {
        const [j, a] = await Promise.all([
          api.GET("/v1/jobs/{job_id}", { params: { path: { job_id: id } } }).then(unwrap),
          api.GET("/v1/jobs/{job_id}/artifacts", { params: { path: { job_id: id } } }).then(unwrap),
        ]);
        if (abort.signal.aborted) return;
        over = TERMINAL.includes(j.status);
        setJob(j);
        setArtifacts(a);
        setError(null);
      } catch (e) {
        if (!abort.signal.aborted) setError(e);
      }
    };
    refreshRef.current = refresh;
    void refresh().then(() => {
      if (over || abort.signal.aborted) return;
      void followEvents(
        id,
        (event) => {
          if (event.type === "progress") {
            const d = event.data as Partial<Job["progress"]>;
            setJob((old) => (old ? { ...old, progress: { ...old.progress, ...d } as Job["progress"] } : old));
          } else if (event.type === "status") {
            const status = String(event.data["status"] ?? "");
            if (TERMINAL.includes(status)) over = true;
            setJob((old) => (old ? { ...old, status: status as Job["status"] } : old));
            void refresh();
          } else if (event.type === "artifact" || event.type === "artifact_removed") {
            void refresh();
          }
        },
        abort.signal,
        () => over,
      ).finally(() => {
        if (!abort.signal.aborted) void refresh();
      });
    });
    return () => abort.abort();
  }, [id]);

  return { job, artifacts, error, refresh: () => refreshRef.current() };
}
