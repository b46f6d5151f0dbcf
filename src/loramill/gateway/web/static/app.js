// loramill web page: the /v1 API with the key kept in localStorage. No framework, no build step.
"use strict";

const KEY = "loramill.apiKey";
const TERMINAL = new Set(["completed", "failed", "canceled"]);
const $ = (selector) => document.querySelector(selector);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
let mode = "single";

// ---- talking to the API ------------------------------------------------------------------------

async function api(path, options = {}) {
  const headers = { ...(options.headers || {}), Authorization: `Bearer ${localStorage.getItem(KEY) || ""}` };
  const response = await fetch(path, { ...options, headers });
  if (!response.ok) {
    let text = response.statusText;
    try { text = (await response.json()).error.message; } catch (_) { /* not JSON */ }
    throw new Error(`${response.status}: ${text}`);
  }
  return response;
}

// EventSource cannot send an Authorization header, so the stream is read with fetch; on a dropped
// connection it reconnects with Last-Event-ID and gets only what it missed.
async function follow(job, onEvent) {
  let lastId = 0;
  for (let attempt = 0; attempt < 100; attempt++) {
    try {
      const headers = lastId ? { "Last-Event-ID": String(lastId) } : {};
      const response = await api(job.links.events, { headers });
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const event = {};
          for (const line of block.split("\n")) {
            const at = line.indexOf(": ");
            if (at > 0) event[line.slice(0, at)] = line.slice(at + 2);
          }
          if (!event.data) continue;
          lastId = Number(event.id) || lastId;
          const data = JSON.parse(event.data);
          onEvent(event.event, data);
          if (TERMINAL.has(data.status)) return data;
        }
      }
      const current = await (await api(job.links.self)).json();
      if (TERMINAL.has(current.status)) return current;
    } catch (error) {
      // a refusal (bad key, unknown job) will not change by retrying; a dropped connection or a 5xx may
      if (/^4\d\d/.test(error.message) && !error.message.startsWith("429")) throw error;
    }
    await sleep(1000);
  }
  throw new Error("lost the event stream");
}

async function imageUrl(file) {
  const blob = await (await api(file.url)).blob();
  return URL.createObjectURL(blob);
}

function say(text, isError = false) {
  const box = $("#message");
  box.textContent = text;
  box.hidden = !text;
  box.classList.toggle("error", isError);
}

// ---- jobs panel --------------------------------------------------------------------------------

function jobRow(job, label) {
  const row = document.createElement("li");
  row.className = "job";
  row.dataset.id = job.id;
  row.dataset.status = job.status;
  row.innerHTML = `<span class="title"></span><button type="button" class="secondary cancel">Cancel</button>
    <span class="status"></span><span class="muted step"></span><progress max="1" value="0"></progress>`;
  row.querySelector(".title").textContent = label;
  row.querySelector(".status").textContent = job.status;
  row.querySelector(".cancel").addEventListener("click", async () => {
    try { await api(job.links.cancel, { method: "POST" }); } catch (error) { say(error.message, true); }
  });
  $("#jobs").prepend(row);
  return row;
}

function showEvent(row, data) {
  row.dataset.status = data.status;
  row.querySelector(".status").textContent = data.status;
  if (data.progress) {
    const bar = row.querySelector("progress");
    bar.max = data.progress.totalSteps || 1;
    bar.value = data.progress.step;
    const step = Math.min(data.progress.step, data.progress.totalSteps);
    row.querySelector(".step").textContent = `${data.progress.stage || ""} ${step}/${data.progress.totalSteps}`;
  }
  if (TERMINAL.has(data.status)) {
    row.querySelector(".cancel").disabled = true;
    if (data.status === "completed") row.querySelector("progress").value = row.querySelector("progress").max;
  }
  if (data.error) {
    const error = document.createElement("span");
    error.className = "error";
    error.textContent = data.error.message;
    row.append(error);
  }
}

async function track(job, label) {
  const row = jobRow(job, label);
  const last = await follow(job, (_, data) => showEvent(row, data));
  showEvent(row, last);
  return (await api(job.links.self)).json();
}

// ---- training ----------------------------------------------------------------------------------

async function submitTraining(event) {
  event.preventDefault();
  const form = new FormData();
  for (const file of $("#train-photos").files) form.append("images", file);
  form.append("triggerWord", $("#train-trigger").value);
  form.append("subjectType", $("#train-subject").value);
  for (const [id, name] of [["#train-steps", "maxSteps"], ["#train-resolution", "resolution"], ["#train-rank", "networkDim"],
    ["#train-init", "initLora"], ["#train-preserve", "preserveWeight"], ["#train-eval-every", "evalEverySteps"]]) {
    if ($(id).value) form.append(name, $(id).value);
  }
  $("#train-submit").disabled = true;
  try {
    const job = await (await api("/v1/trainings", { method: "POST", body: form })).json();
    say("");
    const done = await track(job, `training “${$("#train-trigger").value}”`);
    if (done.status === "completed") {
      say(`LoRA ready: ${done.result.loraId}`);
      await showQuality(done.result.loraId);
    }
    await loadLoras();
  } catch (error) {
    say(error.message, true);
  } finally {
    $("#train-submit").disabled = false;
  }
}

// What the run measured at each evaluation (engine/evaluation): a small chart of fidelity and
// preservation by step, and the sample grid of each evaluation (trigger prompts first, then the others).
const SERIES = [["clip", "fidelity (CLIP)", "#3b5bdb"], ["classifier", "fidelity (scorer)", "#7048e8"],
                ["face", "fidelity (face)", "#1098ad"], ["preservation_clip", "preservation (CLIP)", "#2b8a3e"],
                ["preservation_pixel", "preservation (pixels)", "#74b816"]];

async function showQuality(loraId) {
  const box = $("#train-quality");
  const lora = await (await api(`/v1/loras/${encodeURIComponent(loraId)}`)).json();
  const metrics = lora.metrics || {};
  const evaluations = metrics.evaluations || [];
  box.replaceChildren();
  box.hidden = evaluations.length === 0;
  if (box.hidden) return;
  const summary = document.createElement("p");
  summary.className = "summary";
  summary.textContent = [["consistency", metrics.consistency], ["preservation", metrics.preservation]]
    .filter(([, v]) => typeof v === "number").map(([k, v]) => `${k} ${v.toFixed(3)}`)
    .concat(metrics.bestStep ? [`best step ${metrics.bestStep}`] : []).join(" · ");
  box.append(summary, qualityChart(evaluations));
  const strip = document.createElement("div");
  strip.className = "strip";
  for (const key of metrics.samples || []) {
    const figure = document.createElement("figure");
    const img = document.createElement("img");
    img.alt = key.split("/").pop();
    img.src = await imageUrl({ url: `/v1/files/${key.split("/").map(encodeURIComponent).join("/")}` });
    const caption = document.createElement("figcaption");
    caption.textContent = img.alt.replace(".png", "");
    figure.append(img, caption);
    strip.append(figure);
  }
  box.append(strip);
}

function qualityChart(evaluations) {
  const NS = "http://www.w3.org/2000/svg";
  const width = 360, height = 120, pad = 6;
  const svg = document.createElementNS(NS, "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("role", "img");
  const last = Math.max(...evaluations.map((e) => e.step), 1);
  const legend = document.createElement("div");
  legend.className = "legend";
  for (const [name, label, colour] of SERIES) {
    const points = evaluations.filter((e) => typeof e[name] === "number");
    if (!points.length) continue;
    const line = document.createElementNS(NS, "polyline");
    // every series is a similarity or a share in [0, 1]; the y axis is that range
    line.setAttribute("points", points.map((e) => `${pad + (width - 2 * pad) * e.step / last},` +
      `${height - pad - (height - 2 * pad) * Math.max(0, Math.min(1, e[name]))}`).join(" "));
    line.setAttribute("fill", "none");
    line.setAttribute("stroke", colour);
    line.setAttribute("stroke-width", "2");
    line.dataset.metric = name;
    svg.append(line);
    const key = document.createElement("span");
    key.style.color = colour;
    key.textContent = `${label} ${points[points.length - 1][name].toFixed(2)}`;
    legend.append(key);
  }
  const chart = document.createElement("div");
  chart.append(svg, legend);
  return chart;
}

function previewPhotos() {
  const box = $("#train-previews");
  box.replaceChildren();
  for (const file of $("#train-photos").files) {
    const img = document.createElement("img");
    img.src = URL.createObjectURL(file);
    img.alt = file.name;
    box.append(img);
  }
}

// ---- LoRAs and generation ----------------------------------------------------------------------

async function loadLoras() {
  const { items } = await (await api("/v1/loras")).json();
  const box = $("#loras");
  if (!items.length) return;
  // "Continue from": a training can start from any LoRA the user may use (issue 13).
  const init = $("#train-init");
  const keep = init.value;
  init.replaceChildren(new Option("a fresh LoRA", ""),
    ...items.map((lora) => new Option(lora.name || lora.id.slice(0, 8), lora.id)));
  init.value = keep;
  const chosen = new Map(selectedLoras().map((l) => [l.id, l.weight]));
  box.replaceChildren();
  for (const lora of items) {
    const row = document.createElement("div");
    row.className = "lora";
    row.dataset.id = lora.id;
    const weight = chosen.get(lora.id) ?? 0.8;
    row.innerHTML = `<input type="checkbox" class="use"><label></label>
      <input type="range" class="weight" min="-1" max="2" step="0.05"><output></output>`;
    const trigger = lora.triggerWord ? ` · trigger “${lora.triggerWord}”` : "";
    row.querySelector("label").textContent =
      `${lora.name || lora.id.slice(0, 8)}${lora.public ? " (public)" : ""}${trigger}`;
    row.querySelector(".use").checked = chosen.has(lora.id) || items.length === 1;
    row.querySelector(".weight").value = weight;
    row.querySelector("output").textContent = Number(weight).toFixed(2);
    row.querySelector(".weight").addEventListener("input", (e) => {
      row.querySelector("output").textContent = Number(e.target.value).toFixed(2);
    });
    box.append(row);
  }
}

function selectedLoras() {
  return [...document.querySelectorAll(".lora")].filter((row) => row.querySelector(".use").checked)
    .map((row) => ({ id: row.dataset.id, weight: Number(row.querySelector(".weight").value) }));
}

function generationBody(prompt) {
  const body = { prompt, negativePrompt: $("#gen-negative").value, loras: selectedLoras() };
  for (const [id, name] of [["#gen-width", "width"], ["#gen-height", "height"], ["#gen-steps", "steps"], ["#gen-seed", "seed"]]) {
    if ($(id).value !== "") body[name] = Number($(id).value);
  }
  return body;
}

async function generateOne(prompt, frame) {
  const job = await (await api("/v1/generations", {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(generationBody(prompt)),
  })).json();
  const done = await track(job, `“${prompt.slice(0, 40)}”`);
  if (done.status !== "completed") throw new Error(done.error ? done.error.message : `generation ${done.status}`);
  const files = done.result.files.filter((f) => f.key.endsWith(".png"));
  for (const file of files) {
    const url = await imageUrl(file);
    addToGallery(url, prompt);
    if (frame) frame.querySelector("img").src = url;
  }
}

async function submitGeneration(event) {
  event.preventDefault();
  $("#gen-submit").disabled = true;
  try {
    if (mode === "single") {
      await generateOne($("#gen-prompt").value);
    } else {
      // Storyboard: every scene with the same LoRAs and seed, so the character stays the same person.
      const scenes = $("#story-scenes").value.split("\n").map((s) => s.trim()).filter(Boolean);
      const strip = $("#storyboard");
      strip.replaceChildren();
      strip.hidden = false;
      const frames = scenes.map((scene, i) => {
        const frame = document.createElement("figure");
        frame.className = "frame";
        frame.innerHTML = `<img alt=""><figcaption></figcaption>`;
        frame.querySelector("figcaption").textContent = `${i + 1}. ${scene}`;
        strip.append(frame);
        return frame;
      });
      await Promise.all(scenes.map((scene, i) => generateOne(scene, frames[i])));
    }
    say("");
  } catch (error) {
    say(error.message, true);
  } finally {
    $("#gen-submit").disabled = false;
  }
}

function addToGallery(url, caption) {
  const figure = document.createElement("figure");
  figure.innerHTML = `<img alt=""><figcaption></figcaption>`;
  figure.querySelector("img").src = url;
  figure.querySelector("img").alt = caption;
  figure.querySelector("figcaption").textContent = caption;
  $("#gallery").prepend(figure);
}

async function loadGallery() {
  const { items } = await (await api("/v1/jobs?kind=generation&status=completed&limit=12")).json();
  for (const job of items.reverse()) {
    for (const file of (job.result ? job.result.files : []).filter((f) => f.key.endsWith(".png"))) {
      addToGallery(await imageUrl(file), job.request.prompt);
    }
  }
}

// ---- start -------------------------------------------------------------------------------------

function setMode(next) {
  mode = next;
  for (const tab of document.querySelectorAll(".tab")) tab.classList.toggle("active", tab.dataset.mode === next);
  for (const el of document.querySelectorAll(".single")) el.hidden = next !== "single";
  for (const el of document.querySelectorAll(".storyboard")) el.hidden = next !== "storyboard";
  $("#gen-submit").textContent = next === "single" ? "Generate" : "Render storyboard";
}

async function connect() {
  try {
    const me = await (await api("/v1/me")).json();
    $("#whoami").textContent = `signed in as ${me.userId}${me.isAdmin ? " (admin)" : ""}`;
    say("");
    await loadLoras();
    await loadGallery();
  } catch (error) {
    $("#whoami").textContent = "";
    say(localStorage.getItem(KEY) ? error.message : "Enter your API key (loramill keys create --user NAME).", true);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("#api-key").value = localStorage.getItem(KEY) || "";
  $("#key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    localStorage.setItem(KEY, $("#api-key").value.trim());
    connect();
  });
  $("#train-photos").addEventListener("change", previewPhotos);
  $("#train-form").addEventListener("submit", submitTraining);
  $("#gen-form").addEventListener("submit", submitGeneration);
  for (const tab of document.querySelectorAll(".tab")) tab.addEventListener("click", () => setMode(tab.dataset.mode));
  connect();
});
