// The try-it page: plain JS over the gateway's JSON API (no build step).
"use strict";

const state = { imageId: null, image: null, boxes: [], examples: [], current: -1, taskTable: [] };
const $ = (id) => document.getElementById(id);
const COLORS = ["#ff3b30", "#34c759", "#007aff", "#ff9500", "#af52de"];

async function api(method, path, body) {
  const res = await fetch(path, {
    method,
    headers: { "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const data = await res.json();
  if (!res.ok) throw new Error(data.error ? `${res.status}: ${data.error.message}` : `HTTP ${res.status}`);
  return data;
}

// The `dataset` choices come from GET /tasks (the task table), never from a list in this page.
function hint(task) {
  if (task.requires_candidates) return " (detections as candidates)";
  if (task.dialog) return " (expression as a one-turn dialog)";
  if (task.images_per_example > 1) return " (this image + the next example)";
  return "";
}

async function fillDatasets() {
  const { tasks: rows } = await api("GET", "/tasks");
  state.taskTable = rows;
  document.querySelectorAll("select[data-endpoint]").forEach((sel) => {
    const mine = rows.filter((t) => t.endpoint === sel.dataset.endpoint);
    sel.innerHTML = mine.map((t) => `<option value="${t.dataset}">${t.dataset}${hint(t)}</option>`).join("");
    sel.value = (mine.find((t) => t.default) || mine[0]).dataset;  // the endpoint's default, from the table
  });
}

function taskOf(endpoint, dataset) {
  return state.taskTable.find((t) => t.endpoint === endpoint && t.dataset === dataset);
}

function show(html, isError) {
  $("answer").innerHTML = isError ? `<span class="error">${html}</span>` : html;
}

function escapeHtml(text) {
  const div = document.createElement("div");
  div.textContent = String(text);
  return div.innerHTML;
}

function blobToBase64(blob) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result.split(",", 2)[1]);
    reader.onerror = reject;
    reader.readAsDataURL(blob);
  });
}

function draw(regions) {
  const canvas = $("canvas");
  const ctx = canvas.getContext("2d");
  const img = state.image;
  if (!img) return;
  const scale = Math.min(canvas.width / img.naturalWidth, canvas.height / img.naturalHeight);
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  ctx.drawImage(img, 0, 0, img.naturalWidth * scale, img.naturalHeight * scale);
  canvas.dataset.boxes = String((regions || []).length);
  (regions || []).forEach((r, i) => {
    const b = r.box;
    ctx.strokeStyle = COLORS[i % COLORS.length];
    ctx.lineWidth = i === 0 ? 3 : 1.5;
    ctx.strokeRect(b.xmin * scale, b.ymin * scale, (b.xmax - b.xmin) * scale, (b.ymax - b.ymin) * scale);
    ctx.fillStyle = ctx.strokeStyle;
    ctx.font = "12px sans-serif";
    ctx.fillText(`${i + 1}: ${r.score.toFixed(2)}`, b.xmin * scale + 2, b.ymin * scale + 12);
  });
}

async function useImage(blob, label) {
  show("extracting regions…");
  $("ranked").innerHTML = "";
  const url = URL.createObjectURL(blob);
  const img = new Image();
  await new Promise((resolve) => { img.onload = resolve; img.src = url; });
  state.image = img;
  draw([]);
  try {
    const info = await api("POST", "/images", { image: { base64: await blobToBase64(blob) } });
    state.imageId = info.image_id;
    state.boxes = info.boxes;
    $("image-info").textContent = `${label}: ${info.width}×${info.height}, ${info.boxes.length} regions detected`;
    show("ready: run a task");
  } catch (e) {
    state.imageId = null;
    show(escapeHtml(e.message), true);
  }
}

async function pickExample(i) {
  state.current = i;
  document.querySelectorAll("#examples img").forEach((el, j) => el.classList.toggle("selected", i === j));
  const blob = await (await fetch(state.examples[i].url)).blob();
  await useImage(blob, state.examples[i].name);
}

async function exampleIds() {
  const ids = [];
  for (const ex of state.examples) {
    if (!ex.imageId) {
      const blob = await (await fetch(ex.url)).blob();
      ex.imageId = (await api("POST", "/images", { image: { base64: await blobToBase64(blob) } })).image_id;
    }
    ids.push(ex.imageId);
  }
  return ids;
}

function needImage() {
  if (!state.imageId) throw new Error("pick or upload an image first");
  return { image_id: state.imageId };
}

function remember(task, summary) {
  const li = document.createElement("li");
  li.dataset.task = task;
  li.textContent = `${task}: ${summary}`;
  $("history").prepend(li);
}

async function run(name) {
  try {
    show("running…");
    remember(name, await tasks[name]());
  } catch (e) {
    show(escapeHtml(e.message), true);
    remember(name, `error: ${e.message}`);
  }
}

function table(rows) {
  return `<table>${rows.map((r) => `<tr>${r.map((c) => `<td>${escapeHtml(c)}</td>`).join("")}</tr>`).join("")}</table>`;
}

const tasks = {
  async vqa() {
    const res = await api("POST", "/vqa", {
      image: needImage(), question: $("vqa-question").value, dataset: $("vqa-dataset").value, top_k: 5,
    });
    show(`<b>${escapeHtml(res.answers[0].answer)}</b> (${res.task})` +
      table(res.answers.map((a) => [a.answer, a.score.toFixed(3)])));
    return res.answers[0].answer;
  },
  async ground() {
    const dataset = $("ground-dataset").value;
    const text = $("ground-expression").value;
    const body = { image: needImage(), dataset, top_k: 3 };
    const task = taskOf("ground", dataset);
    if (task.dialog) body.dialog = [{ question: text, answer: "yes" }];
    else body.expression = text;
    if (task.requires_candidates) body.candidates = state.boxes.slice(0, 4).map((b) => b.box);
    const res = await api("POST", "/ground", body);
    draw(res.regions);
    show(`${res.no_match ? "no confident match; best guesses" : "found"} (${res.task})` +
      table(res.regions.map((r, i) => [`${i + 1}`, r.label || "", r.score.toFixed(3),
        `[${[r.box.xmin, r.box.ymin, r.box.xmax, r.box.ymax].map((v) => v.toFixed(0)).join(", ")}]`])));
    return `${res.regions.length} boxes drawn${res.no_match ? " (no confident match)" : ""}`;
  },
  async retrieve() {
    const ids = await exampleIds();
    const res = await api("POST", "/retrieve", {
      caption: $("retrieve-caption").value, images: ids.map((id) => ({ image_id: id })),
      dataset: $("retrieve-dataset").value, top_k: ids.length,
    });
    show(`ranked ${res.results.length} images (${res.task})`);
    $("ranked").innerHTML = res.results.map((r) => {
      const ex = state.examples[ids.indexOf(r.image_id)];
      return `<figure><img src="${ex.url}" alt="${ex.name}"><figcaption>#${r.rank} ${r.score.toFixed(3)}</figcaption></figure>`;
    }).join("");
    return `best: ${state.examples[ids.indexOf(res.results[0].image_id)].name}`;
  },
  async verify() {
    const dataset = $("verify-dataset").value;
    const images = [needImage()];
    if (taskOf("verify", dataset).images_per_example > 1) {
      const ids = await exampleIds();
      images.push({ image_id: ids[(Math.max(state.current, 0) + 1) % ids.length] });
    }
    const res = await api("POST", "/verify", { images, statement: $("verify-statement").value, dataset });
    show(`<b>${escapeHtml(res.label)}</b> (${res.task})` +
      table(Object.entries(res.scores).map(([k, v]) => [k, v.toFixed(3)])));
    return res.label;
  },
};

for (const name of Object.keys(tasks)) {
  $(`${name}-form`).addEventListener("submit", (ev) => { ev.preventDefault(); run(name); });
}
$("file").addEventListener("change", (ev) => {
  const file = ev.target.files[0];
  if (file) useImage(file, file.name);
});

(async () => {
  await fillDatasets();
  const data = await api("GET", "/examples");
  state.examples = data.examples;
  $("examples").innerHTML = data.examples
    .map((ex, i) => `<img src="${ex.url}" alt="${ex.name}" title="${ex.name}" data-i="${i}">`).join("");
  document.querySelectorAll("#examples img").forEach((el) =>
    el.addEventListener("click", () => pickExample(Number(el.dataset.i))));
  if (data.examples.length) await pickExample(0);
  // `/?run=vqa,ground` runs tasks on the first example right away (shareable demos, browser tests).
  const auto = new URLSearchParams(location.search).get("run");
  for (const name of (auto || "").split(",").filter((n) => n in tasks)) await run(name);
  document.body.dataset.ready = "true";
})();
