// The training form's live plan: POST /v1/plan, debounced while the user types, its 422s placed at the
// fields they name (`config.<field>`), and the plan's counts beside the form.
import { useEffect, useState } from "preact/hooks";
import { api, ApiError, asApiError, formatBytes, formatDuration, type PlanOut } from "../api";
import { ErrorNote, Section } from "../components";

/** How long the form must stay unchanged before its plan is asked for. */
export const PLAN_DELAY_MS = 300;

export type PlanBody = { dataset_id: string; config: Record<string, unknown> };
export type PlanState = { plan: PlanOut | null; error: ApiError | null; busy: boolean };

/** The plan of `body` (null: nothing to ask yet), asked for once the body has not changed for
 * PLAN_DELAY_MS; a request made stale by a newer body is aborted and its answer dropped. */
export function usePlan(body: PlanBody | null): PlanState {
  const [state, setState] = useState<PlanState>({ plan: null, error: null, busy: false });
  const key = body ? JSON.stringify(body) : "";
  useEffect(() => {
    if (!body) {
      setState((old) => (old.busy ? { ...old, busy: false } : old));
      return;
    }
    const abort = new AbortController();
    setState((old) => (old.busy ? old : { ...old, busy: true }));
    const timer = setTimeout(async () => {
      try {
        const result = await api.POST("/v1/plan", { body: body as never, signal: abort.signal });
        if (abort.signal.aborted) return;
        if (result.data) setState({ plan: result.data, error: null, busy: false });
        else setState({ plan: null, error: asApiError(result.error, result.response.status), busy: false });
      } catch (e) {
        if (!abort.signal.aborted) setState({ plan: null, error: asApiError(e), busy: false });
      }
    }, PLAN_DELAY_MS);
    return () => {
      clearTimeout(timer);
      abort.abort();
    };
  }, [key]);
  return state;
}

export type PlacedErrors = { byField: Record<string, string>; rest: ApiError | null };

/** An API error's fields (details.fields[] or details.field, as `config.<field>` or `config.<field>.N`)
 * on the form's own fields; what names no field on the form (the whole config, base_model, dataset_id)
 * stays in `rest`. */
export function placeErrors(error: unknown, onForm: (name: string) => boolean): PlacedErrors {
  if (!error) return { byField: {}, rest: null };
  const e = asApiError(error);
  const listed = e.details["fields"];
  const fields: { field: string; message: string }[] = Array.isArray(listed)
    ? (listed as { field?: unknown; message?: unknown }[]).map((f) => ({
        field: String(f.field ?? ""),
        message: String(f.message ?? "invalid"),
      }))
    : typeof e.details["field"] === "string"
      ? [{ field: e.details["field"], message: e.message }]
      : [];
  const byField: Record<string, string> = {};
  let unplaced = fields.length === 0;
  for (const { field, message: raw } of fields) {
    const message = raw.replace(/^Value error, /, ""); // pydantic's prefix for a check's own words
    const [root, part] = field.split(".");
    // a check of the whole config names its field first ("min_bucket_reso (256) must be <= resolution")
    const name = part ?? /^([a-z][a-z0-9]*(?:_[a-z0-9]+)*) /.exec(message)?.[1];
    if (root === "config" && name && onForm(name)) {
      byField[name] = byField[name] ? `${byField[name]}; ${message}` : message;
    } else unplaced = true;
  }
  return { byField, rest: unplaced ? e : null };
}

type Plan = {
  images?: number;
  reg_images?: number;
  repeats?: number | null;
  epochs?: number;
  steps_per_epoch?: number;
  total_steps?: number;
  saved_epochs?: number[];
  buckets?: { width: number; height: number; images: number; samples: number; batches: number }[];
};
type Warning = { code?: string; message?: string };

/** The plan's `estimate` (shared/jobs/run_speeds.py): the run time and what it is based on. */
export type Estimate = {
  seconds?: number;
  training?: { steps_per_second?: number; basis?: { source?: string; runs?: number; gpu_model?: string | null } };
  captioning?: { seconds?: number } | null;
};

/** "from 3 runs on NVIDIA H100" or "from the default table (nothing measured here yet)". */
export function estimateBasis(estimate: Estimate): string {
  const basis = estimate.training?.basis ?? {};
  if (basis.source === "history") {
    const runs = basis.runs ?? 0;
    return `from ${runs} measured run${runs === 1 ? "" : "s"}${basis.gpu_model ? ` on ${basis.gpu_model}` : ""}`;
  }
  return "from the default table (nothing measured here yet)";
}

/** The plan's `vram` (shared/vram/estimate.py): the predicted peak GPU memory and the card sizes it fits. */
export type Vram = {
  peak_bytes: number;
  peak_phase?: string;
  cards?: { gb: number; fits: boolean; message: string }[];
};

/** "fits 24 GB and 16 GB; 12 GB: fits 12 GB with gradient_checkpointing true" */
export function vramCards(vram: Vram): string {
  const cards = vram.cards ?? [];
  const fits = cards.filter((c) => c.fits).map((c) => `${c.gb} GB`);
  const others = cards.filter((c) => !c.fits).map((c) => c.message);
  return [fits.length ? `fits ${fits.join(", ")}` : "", ...others].filter(Boolean).join("; ");
}

function Buckets({ buckets }: { buckets: NonNullable<Plan["buckets"]> }) {
  return (
    <table class="list compact">
      <caption>Buckets</caption>
      <thead>
        <tr>
          <th scope="col">Size</th>
          <th scope="col">Images</th>
          <th scope="col">Samples / epoch</th>
          <th scope="col">Batches</th>
        </tr>
      </thead>
      <tbody>
        {buckets.map((b) => (
          <tr>
            <td>
              {b.width}×{b.height}
            </td>
            <td>{b.images}</td>
            <td>{b.samples}</td>
            <td>{b.batches}</td>
          </tr>
        ))}
      </tbody>
    </table>
  );
}

function status(state: PlanState, placed: number): string {
  if (state.busy) return "Updating…";
  if (state.plan) return "Counted as Kohya counts (POST /v1/plan); nothing is stored.";
  if (placed) return `No plan until ${placed === 1 ? "this field is" : `these ${placed} fields are`} fixed:`;
  if (state.error) return "No plan: see the error below.";
  return "Pick a dataset and a base model.";
}

/** The fields the plan refused, each a button to its input (which shows the reason below it). */
function FieldsToFix({ placed, idPrefix }: { placed: Record<string, string>; idPrefix: string }) {
  const names = Object.keys(placed);
  if (!names.length) return null;
  return (
    <ul class="fields-to-fix">
      {names.map((name) => (
        <li>
          <button type="button" class="link" onClick={() => document.getElementById(`${idPrefix}-${name}`)?.focus()}>
            {name}
          </button>
          : {placed[name]}
        </li>
      ))}
    </ul>
  );
}

/** The plan beside the form; `placed` errors are shown at their fields (and listed here), `rest` here. */
export function PlanView({
  state,
  placed,
  rest,
  idPrefix,
}: {
  state: PlanState;
  placed: Record<string, string>;
  rest: ApiError | null;
  idPrefix: string;
}) {
  const { plan } = state;
  const p = (plan?.plan ?? {}) as Plan;
  const warnings = (plan?.warnings ?? []) as Warning[];
  const estimate = (plan?.estimate ?? {}) as Estimate;
  const vram = (plan?.vram ?? null) as Vram | null;
  return (
    <Section title="Plan" id="plan">
      <p class="muted small" aria-live="polite" data-testid="plan-status">
        {status(state, Object.keys(placed).length)}
      </p>
      {!state.busy && <FieldsToFix placed={placed} idPrefix={idPrefix} />}
      <ErrorNote error={rest} />
      {plan && (
        <>
          <dl class="stats" data-testid="plan">
            <div>
              <dt>Steps per epoch</dt>
              <dd data-testid="plan-steps-per-epoch">{p.steps_per_epoch}</dd>
            </div>
            <div>
              <dt>Total steps</dt>
              <dd data-testid="plan-total-steps">{p.total_steps}</dd>
            </div>
            <div>
              <dt>Epochs</dt>
              <dd>{p.epochs}</dd>
            </div>
            <div>
              <dt>Images × repeats</dt>
              <dd>
                {p.images} × {p.repeats ?? "mixed"}
                {p.reg_images ? ` + ${p.reg_images} reg` : ""}
              </dd>
            </div>
            <div>
              <dt>Saved epochs</dt>
              <dd data-testid="plan-saved-epochs">{(p.saved_epochs ?? []).join(", ")}</dd>
            </div>
            <div>
              <dt>Files kept</dt>
              <dd>{plan.checkpoint_count}</dd>
            </div>
            {plan.family && (
              <div>
                <dt>Family</dt>
                <dd data-testid="plan-family">{plan.family}</dd>
              </div>
            )}
            {estimate.seconds !== undefined && (
              <div>
                <dt>Expected time</dt>
                <dd data-testid="plan-estimate" title={estimateBasis(estimate)}>
                  {formatDuration(estimate.seconds)}
                  {estimate.captioning ? ` (captioning ${formatDuration(estimate.captioning.seconds)})` : ""}
                </dd>
              </div>
            )}
            {vram && (
              <div>
                <dt>GPU memory</dt>
                <dd data-testid="plan-vram" title="predicted peak on one card (rough: docs/operations.md)">
                  {formatBytes(vram.peak_bytes)}
                  {vram.peak_phase ? ` (${vram.peak_phase})` : ""}
                </dd>
              </div>
            )}
          </dl>
          {vram && (
            <p class="muted small" data-testid="plan-vram-cards">
              GPU memory: {vramCards(vram)}.
            </p>
          )}
          {estimate.seconds !== undefined && (
            <p class="muted small" data-testid="plan-estimate-basis">
              Expected time {estimateBasis(estimate)}.
            </p>
          )}
          {p.buckets?.length ? <Buckets buckets={p.buckets} /> : null}
          {warnings.length > 0 && (
            <ul class="warnings" aria-label="Plan warnings">
              {warnings.map((w) => (
                <li>
                  <code>{w.code}</code> {w.message}
                </li>
              ))}
            </ul>
          )}
        </>
      )}
    </Section>
  );
}
