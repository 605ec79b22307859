// Builds src/ into dist/ (index.html + hashed assets/), which the API serves at `/` (api/web_page.py).
// No CDN, no runtime fetches of anything but this API: the page works offline on a LAN.
import { defineConfig } from "vite";

export default defineConfig({
  esbuild: { jsx: "automatic", jsxImportSource: "preact" },
  build: { target: "es2022", sourcemap: false },
});
