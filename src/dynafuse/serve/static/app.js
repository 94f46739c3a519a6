// dynafuse serve's page: pick or drop a clip, POST it to /predict, draw the answer. Text from the server is only
// ever set with textContent, never parsed as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
let limits = {};
let runs = [];

async function getJSON(url, options) {
  const response = await fetch(url, options);
  const body = await response.json().catch(() => ({ error: `HTTP ${response.status} ${response.statusText}` }));
  if (!response.ok) {
    const retry = response.headers.get("Retry-After");
    throw new Error((body.error || `HTTP ${response.status}`) + (retry ? ` (retry in ${retry} s)` : ""));
  }
  return body;
}

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  if (className) node.className = className;
  return node;
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

function signed(x) {
  return (x >= 0 ? "+" : "\u2212") + Math.abs(x).toFixed(3);
}

function describeRun() {
  const run = runs.find((r) => r.name === $("run").value);
  const info = $("run-info");
  info.replaceChildren();
  if (!run) return;
  const usable = run.modalities.filter((m) => !(m in run.ignored));
  info.append(`${run.model} trained on ${run.dataset}; scores in [${run.range[0]}, ${run.range[1]}]; ` +
    `uses ${usable.join(", ") || "nothing"} from a clip.`);
  for (const [m, why] of Object.entries(run.ignored)) info.append(el("br"), `${m}: ${why}`);
}

function setClip(file) {
  $("drop-text").textContent = file ? `${file.name} (${(file.size / 1e6).toFixed(2)} MB)`
    : "Choose a clip, or drop it here";
}

async function init() {
  try {
    [limits, runs] = await Promise.all([getJSON("/health"), getJSON("/runs")]);
  } catch (e) {
    showError(`cannot reach the dynafuse server: ${e.message}`);
    return;
  }
  $("clip").accept = ["video/*", "audio/*", ...limits.suffixes].join(",");
  for (const run of runs) {
    $("run").add(new Option(`${run.name} (${run.model})`, run.name, run.default, run.default));
  }
  describeRun();
}

function renderScale(score, [lo, hi]) {
  const at = Math.min(100, Math.max(0, ((score - lo) / (hi - lo)) * 100));
  $("scale-marker").style.left = `${at}%`;
  $("scale-min").textContent = String(lo);
  $("scale-max").textContent = `+${hi}`;
}

function renderModalities(modalities) {
  const body = $("modalities").tBodies[0];
  body.replaceChildren();
  for (const [m, s] of Object.entries(modalities)) {
    const row = el("tr");
    row.dataset.modality = m;
    row.append(el("td", m), el("td", s.present ? "yes" : "no", s.present ? "yes" : "no"),
      el("td", s.used ? "yes" : "no", s.used ? "yes" : "no"), el("td", s.note || ""));
    body.append(row);
  }
}

function renderGates(gates, model) {
  const box = $("gates");
  box.replaceChildren();
  const names = Object.keys(gates);
  if (!names.length) {
    box.append(el("p", `${model} has no modality gates: it fuses its inputs with fixed weights.`, "muted"));
    return;
  }
  for (const name of names) {
    const group = el("div", undefined, "gate-group");
    group.dataset.gate = name;
    group.append(el("h3", `gate: ${name}`));
    for (const [part, weight] of Object.entries(gates[name])) {
      const bar = el("div", undefined, "gate-bar");
      bar.dataset.component = part;
      bar.dataset.weight = String(weight);
      const track = el("div", undefined, "gate-track");
      const fill = el("div", undefined, `gate-fill m-${part.split(/[^a-z]/)[0]}`);
      fill.style.width = `${Math.min(1, Math.max(0, weight)) * 100}%`;
      track.append(fill);
      bar.append(el("span", part, "gate-label"), track, el("span", weight.toFixed(3), "gate-value"));
      group.append(bar);
    }
    box.append(group);
  }
}

function render(r) {
  $("score").textContent = signed(r.score);
  $("score").className = r.polarity;
  $("polarity").textContent = r.polarity;
  $("level").textContent = r.level ? `7-level: ${r.level}` : "";
  renderScale(r.score, r.range);
  $("clip-name").textContent = `${r.clip}, scored by ${r.model}`;
  $("transcript-used").textContent = r.transcript;
  $("transcript-source").textContent = {
    asr: "(transcribed by whisper tiny.en)",
    "given+asr-timing": "(as given; words timed by ASR)",
    "given+even-timing": "(as given; words spread over the speech)",
  }[r.transcript_source] || `(${r.transcript_source})`;
  renderModalities(r.modalities);
  renderGates(r.gates, r.model);
  const t = r.timings;
  const total = Object.values(t).reduce((a, b) => a + b, 0);
  $("timings").textContent = `Scored in ${total.toFixed(2)} s: ` +
    Object.entries(t).map(([k, v]) => `${k} ${v.toFixed(2)}`).join(", ") + ".";
  $("result").hidden = false;
}

async function submit(event) {
  event.preventDefault();
  showError("");
  const file = $("clip").files[0];
  if (!file) return showError("Choose a clip first.");
  if (limits.max_upload_bytes && file.size > limits.max_upload_bytes) {
    return showError(`${file.name}: larger than the ${limits.max_upload_bytes / 1048576} MB upload limit`);
  }
  const form = new FormData();
  form.append("clip", file, file.name);
  const transcript = $("transcript").value.trim();
  if (transcript) form.append("transcript", transcript);
  if ($("run").value) form.append("run", $("run").value);
  $("submit").disabled = true;
  $("status").textContent = `scoring ${file.name}\u2026`;
  try {
    render(await getJSON("/predict", { method: "POST", body: form }));
    $("status").textContent = "";
  } catch (e) {
    $("result").hidden = true;
    $("status").textContent = "";
    showError(e.message);
  } finally {
    $("submit").disabled = false;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  const drop = $("drop");
  $("predict-form").addEventListener("submit", submit);
  $("run").addEventListener("change", describeRun);
  $("clip").addEventListener("change", () => setClip($("clip").files[0]));
  for (const type of ["dragenter", "dragover"]) {
    drop.addEventListener(type, (e) => { e.preventDefault(); drop.classList.add("over"); });
  }
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    if (e.dataTransfer.files.length) {
      $("clip").files = e.dataTransfer.files;
      setClip($("clip").files[0]);
    }
  });
  init();
});
