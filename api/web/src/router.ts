// Hash routes (#/jobs/ID): the API serves one index.html at `/` and needs no fallback route.
import { useEffect, useState } from "preact/hooks";

export type Route =
  | { page: "jobs" }
  | { page: "job"; id: string }
  | { page: "datasets" }
  | { page: "dataset"; id: string }
  | { page: "train"; datasetId: string | null };

export function parseRoute(hash: string): Route {
  const parts = hash.replace(/^#\/?/, "").split("?")[0]!.split("/").filter(Boolean).map(decodeURIComponent);
  const query = new URLSearchParams(hash.split("?")[1] ?? "");
  if (parts[0] === "jobs" && parts[1]) return { page: "job", id: parts[1] };
  if (parts[0] === "datasets" && parts[1]) return { page: "dataset", id: parts[1] };
  if (parts[0] === "datasets") return { page: "datasets" };
  if (parts[0] === "train") return { page: "train", datasetId: query.get("dataset") };
  return { page: "jobs" };
}

export function href(route: Route): string {
  switch (route.page) {
    case "job":
      return `#/jobs/${encodeURIComponent(route.id)}`;
    case "dataset":
      return `#/datasets/${encodeURIComponent(route.id)}`;
    case "datasets":
      return "#/datasets";
    case "train":
      return route.datasetId ? `#/train?dataset=${encodeURIComponent(route.datasetId)}` : "#/train";
    default:
      return "#/jobs";
  }
}

export function navigate(route: Route): void {
  window.location.hash = href(route);
}

export function useRoute(): Route {
  const [route, setRoute] = useState(() => parseRoute(window.location.hash));
  useEffect(() => {
    const onChange = () => setRoute(parseRoute(window.location.hash));
    window.addEventListener("hashchange", onChange);
    return () => window.removeEventListener("hashchange", onChange);
  }, []);
  return route;
}
