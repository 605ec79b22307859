import { useState } from "preact/hooks";
import { getKey, setKey } from "./api";
import { DatasetPage } from "./pages/dataset";
import { DatasetsPage } from "./pages/datasets";
import { JobPage } from "./pages/job";
import { JobsPage } from "./pages/jobs";
import { TrainPage } from "./pages/train";
import { href, useRoute } from "./router";

function KeyForm({ onSaved }: { onSaved: (key: string) => void }) {
  const [value, setValue] = useState("");
  return (
    <main class="key-page">
      <h1>lorabake</h1>
      <form
        class="card"
        onSubmit={(e) => {
          e.preventDefault();
          const key = value.trim();
          if (key) onSaved(key);
        }}
      >
        <h2>API key</h2>
        <p>
          Paste the API key <code>scripts/run</code> printed (also in <code>data/api-key</code>), or one made with{" "}
          <code>lorabake create-key</code>. It is kept in this browser only and sent as{" "}
          <code>Authorization: Bearer</code> to this API.
        </p>
        <label for="api-key">API key</label>
        <input
          id="api-key"
          type="password"
          autocomplete="off"
          spellcheck={false}
          value={value}
          onInput={(e) => setValue(e.currentTarget.value)}
          required
        />
        <button type="submit">Save key</button>
      </form>
    </main>
  );
}

export function App() {
  const [key, setKeyState] = useState(getKey());
  const route = useRoute();
  if (!key) {
    return (
      <KeyForm
        onSaved={(k) => {
          setKey(k);
          setKeyState(k);
        }}
      />
    );
  }
  const current = route.page === "job" ? "jobs" : route.page === "dataset" ? "datasets" : route.page;
  const nav = [
    { page: "jobs", label: "Jobs", to: href({ page: "jobs" }) },
    { page: "datasets", label: "Datasets", to: href({ page: "datasets" }) },
    { page: "train", label: "New training", to: href({ page: "train", datasetId: null }) },
  ];
  return (
    <>
      <header class="top">
        <a class="brand" href="#/jobs">
          lorabake
        </a>
        <nav aria-label="Main">
          {nav.map((item) => (
            <a href={item.to} aria-current={current === item.page ? "page" : undefined}>
              {item.label}
            </a>
          ))}
        </nav>
        <button
          type="button"
          class="secondary"
          onClick={() => {
            setKey("");
            setKeyState("");
          }}
        >
          Forget key
        </button>
      </header>
      <main class="content">
        {route.page === "jobs" && <JobsPage />}
        {route.page === "job" && <JobPage id={route.id} key={route.id} />}
        {route.page === "datasets" && <DatasetsPage />}
        {route.page === "dataset" && <DatasetPage id={route.id} key={route.id} />}
        {route.page === "train" && <TrainPage datasetId={route.datasetId} key={route.datasetId ?? ""} />}
      </main>
    </>
  );
}
