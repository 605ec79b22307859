// Which TrainingConfig fields apply to which model family. The rule lives on the server
// (shared/config/family_options.py, listed by GET /v1/presets as `families`); this is the page's one place
// that reads it: the training form hides what does not apply and never sends it.
import type { Schemas } from "./api";
import type { FormValues } from "./schema-form";

export type FamilyFields = Schemas["FamilyFieldsOut"];
export type Families = Record<string, FamilyFields>;
type Model = Schemas["ModelOut"];

/** The family a config trains for: its explicit model_family, else the base model's in GET /v1/models
 * (null when neither says: a .ckpt, a model no worker listed; then every field is shown). */
export function chosenFamily(values: FormValues, models: Model[], baseModel: string): string | null {
  const explicit = (values["model_family"] ?? "").trim();
  if (explicit && explicit !== "auto") return explicit;
  return models.find((m) => m.name === baseModel)?.family ?? null;
}

export function applies(name: string, family: FamilyFields | null): boolean {
  return !family || !(name in family.not_applicable);
}

/** The form's values without those the family cannot use (the same object when nothing is dropped). */
export function applicableValues(values: FormValues, family: FamilyFields | null): FormValues {
  if (!family || !Object.keys(values).some((name) => !applies(name, family))) return values;
  return Object.fromEntries(Object.entries(values).filter(([name]) => applies(name, family)));
}

/** The preset's values for a base of this family (flux1: the FLUX trainers' values), else its SD values. */
export function presetValues(preset: Schemas["PresetOut"] | undefined, family: string | null): Record<string, unknown> {
  if (!preset) return {};
  const own = family ? preset.families[family] : undefined;
  return (own?.values ?? preset.values) as Record<string, unknown>;
}
