import type { ComponentChildren } from "preact";
import { useEffect, useState } from "preact/hooks";
import { ApiError, fetchBlob } from "./api";

export function ErrorNote({ error }: { error: unknown }) {
  if (!error) return null;
  const e = error as ApiError;
  const field = e.details && typeof e.details["field"] === "string" ? ` (${e.details["field"]})` : "";
  return (
    <p class="error" role="alert">
      {e.code ? <code>{e.code}</code> : null} {e.message}
      {field}
    </p>
  );
}

export function ProgressBar({ value, max, label }: { value: number; max: number; label: string }) {
  const percent = max > 0 ? Math.min(100, (value / max) * 100) : 0;
  return (
    <div class="progress">
      <div
        class="progress-track"
        role="progressbar"
        aria-label={label}
        aria-valuemin={0}
        aria-valuemax={max || 100}
        aria-valuenow={max > 0 ? value : 0}
        aria-valuetext={`${percent.toFixed(0)}%`}
      >
        <div class="progress-fill" style={{ width: `${percent}%` }} />
      </div>
      <span class="progress-text">{percent.toFixed(0)}%</span>
    </div>
  );
}

/** An image behind the key (thumbnails, samples): fetched with the Authorization header as a blob URL. */
export function AuthImage({ path, alt, width, height }: { path: string; alt: string; width?: number; height?: number }) {
  const [src, setSrc] = useState<string | null>(null);
  const [failed, setFailed] = useState(false);
  useEffect(() => {
    let url: string | null = null;
    let live = true;
    fetchBlob(path)
      .then((blob) => {
        if (!live) return;
        url = URL.createObjectURL(blob);
        setSrc(url);
      })
      .catch(() => live && setFailed(true));
    return () => {
      live = false;
      if (url) URL.revokeObjectURL(url);
    };
  }, [path]);
  if (failed) return <span class="img-missing">image unavailable</span>;
  if (!src) return <span class="img-loading" style={{ width, height }} aria-label={`loading ${alt}`} />;
  return <img src={src} alt={alt} width={width} height={height} loading="lazy" />;
}

export function StatusBadge({ status }: { status: string }) {
  return <span class={`badge badge-${status}`}>{status}</span>;
}

export function Section({ title, children, id }: { title: string; children: ComponentChildren; id?: string }) {
  return (
    <section class="card" aria-labelledby={id ? `${id}-title` : undefined}>
      <h2 id={id ? `${id}-title` : undefined}>{title}</h2>
      {children}
    </section>
  );
}

/** Loss per step, drawn as an SVG line (no chart library: a few hundred points at most per job). */
export function LossChart({ points }: { points: { step: number; loss: number }[] }) {
  if (points.length < 2) {
    return <p class="muted">The loss chart appears after the first two progress reports.</p>;
  }
  const w = 560;
  const h = 180;
  const pad = { l: 48, r: 12, t: 10, b: 26 };
  const steps = points.map((p) => p.step);
  const losses = points.map((p) => p.loss);
  const x0 = Math.min(...steps);
  const x1 = Math.max(...steps, x0 + 1);
  let y0 = Math.min(...losses);
  let y1 = Math.max(...losses);
  if (y1 - y0 < 1e-9) {
    y0 -= 0.5;
    y1 += 0.5;
  }
  const sx = (s: number) => pad.l + ((s - x0) / (x1 - x0)) * (w - pad.l - pad.r);
  const sy = (v: number) => pad.t + (1 - (v - y0) / (y1 - y0)) * (h - pad.t - pad.b);
  const line = points.map((p) => `${sx(p.step).toFixed(1)},${sy(p.loss).toFixed(1)}`).join(" ");
  const last = points[points.length - 1]!;
  return (
    <figure class="chart">
      <svg viewBox={`0 0 ${w} ${h}`} role="img" aria-label={`Loss by step: ${points.length} points, last ${last.loss.toFixed(4)} at step ${last.step}`}>
        <line x1={pad.l} y1={h - pad.b} x2={w - pad.r} y2={h - pad.b} class="axis" />
        <line x1={pad.l} y1={pad.t} x2={pad.l} y2={h - pad.b} class="axis" />
        <text x={pad.l - 6} y={sy(y1) + 4} class="tick" text-anchor="end">{y1.toPrecision(3)}</text>
        <text x={pad.l - 6} y={sy(y0) + 4} class="tick" text-anchor="end">{y0.toPrecision(3)}</text>
        <text x={pad.l} y={h - 8} class="tick">step {x0}</text>
        <text x={w - pad.r} y={h - 8} class="tick" text-anchor="end">step {x1}</text>
        <polyline points={line} class="loss-line" />
      </svg>
      <figcaption>Loss (last {last.loss.toFixed(4)} at step {last.step})</figcaption>
    </figure>
  );
}
