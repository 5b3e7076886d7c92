// Copies the chart library the dashboard uses from node_modules into vendor/, where the query
// API embeds it at compile time (so a Rust build needs no Node and the page loads nothing from
// a CDN).
//
// To update uPlot: change its version in package.json, run `npm install`, then `npm run vendor`,
// check the page (deploy/test-dashboard.sh) and commit package.json, package-lock.json and
// vendor/.
import { copyFileSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const uplot = join(here, "node_modules", "uplot");
const version = JSON.parse(readFileSync(join(uplot, "package.json"), "utf8")).version;

copyFileSync(join(uplot, "dist", "uPlot.iife.min.js"), join(here, "vendor", "uplot.min.js"));
copyFileSync(join(uplot, "dist", "uPlot.min.css"), join(here, "vendor", "uplot.min.css"));
copyFileSync(join(uplot, "LICENSE"), join(here, "vendor", "LICENSE.uplot"));
writeFileSync(join(here, "vendor", "VERSION"), `uplot ${version}\n`);
console.log(`vendored uplot ${version} into vendor/`);
