// The explorer page: plain DOM, no framework, talks only to this server's JSON API. The page writes what it
// shows into <body data-*> (state, predicted, probabilities) so a headless browser test can read it.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { run: null, image: 0, upload: null, off: new Map(), mode: "zero", block: null };

function el(tag, props = {}, children = []) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "class") node.className = v;
    else if (k === "dataset") Object.assign(node.dataset, v);
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node[k] = v;
  }
  for (const child of [].concat(children)) node.append(child);
  return node;
}

async function api(path, body, raw) {
  const init = body === undefined ? {} : { method: "POST", body: raw ? body : JSON.stringify(body) };
  const response = await fetch(path, init);
  const answer = await response.json();
  if (!response.ok) throw new Error(answer.error || response.statusText);
  return answer;
}

function showError(error) {
  $("error").hidden = !error;
  $("error").textContent = error ? String(error.message || error) : "";
  if (error) document.body.dataset.error = $("error").textContent;
}

function offText() {
  const items = [];
  for (const [block, branches] of state.off) for (const b of [...branches].sort()) items.push(`${block}:${b}`);
  return items.join(",");
}

function source() {
  return state.upload ? { upload: state.upload } : { image: state.image };
}

// ------------------------------------------------------------------------------------ prediction and bars

async function predict() {
  document.body.dataset.state = "busy";
  try {
    const p = await api("/api/predict", { ...source(), off: offText(), mode: state.mode });
    drawBars(p);
    $("model-input").src = p.input;
    const label = p.label === null ? "" : `, true: ${state.run.classes[p.label]}`;
    $("input-caption").textContent = `what the model sees (${state.run.image_size} px${label})`;
    Object.assign(document.body.dataset, { state: "ready", predicted: p.predicted, name: p.name,
      probabilities: JSON.stringify(p.probabilities), off: offText(), mode: p.mode,
      image: p.image === null ? "" : p.image });
    showError(null);
  } catch (error) {
    document.body.dataset.state = "error";
    showError(error);
  }
}

function drawBars(p) {
  const source = p.upload ? "the picture" : `test image ${p.image}`;
  const off = offText() || "none";
  $("prediction-line").textContent = `${source}: ${p.name} (${(100 * p.probabilities[p.predicted]).toFixed(1)} %),`
    + ` branches off: ${off} (${p.mode})`;
  $("bars").replaceChildren(...p.probabilities.map((q, i) => {
    const fill = el("div", { class: "fill" });
    fill.style.width = `${(100 * q).toFixed(2)}%`;
    return el("div", { class: i === p.predicted ? "bar top" : "bar", dataset: { cls: i } },
      [el("span", { textContent: state.run.classes[i] }), el("div", {}, fill),
       el("span", { class: "value", textContent: `${(100 * q).toFixed(1)} %` })]);
  }));
}

// ---------------------------------------------------------------------------------------- knockout board

function drawBoard() {
  const drops = state.run.drops;
  $("drops-line").textContent = drops
    ? `beside each branch: the test-accuracy drop when it is ablated (${state.mode}), from inspect on ${drops.count} images`
    : "no inspect.json in this run yet: measure the accuracy drops below";
  $("inspect-box").hidden = Boolean(drops);
  $("board").replaceChildren(...state.run.blocks.map((b) => {
    const pick = el("button", { type: "button", class: b.block === state.block ? "block selected" : "block",
      textContent: b.block, title: b.kind, onclick: () => selectBlock(b.block) });
    const toggles = [];
    for (let i = 1; i <= b.branches; i++) {
      const off = state.off.has(b.block) && state.off.get(b.block).has(i);
      const row = drops && drops.blocks[b.block] ? drops.blocks[b.block][i - 1] : null;
      const drop = row ? `${(100 * row[`${state.mode}_drop`]).toFixed(1)}` : "";
      const box = el("input", { type: "checkbox", checked: !off, id: `t-${b.block}-${i}`,
        onchange: () => toggle(b.block, i) });
      toggles.push(el("label", { class: off ? "toggle off" : "toggle", title: "accuracy drop, points" },
        [box, `${i}`, el("span", { class: "note", textContent: drop })]));
    }
    return el("tr", {}, [el("td", {}, pick), el("td", {}, toggles)]);
  }));
}

function toggle(block, branch) {
  const set = state.off.get(block) || new Set();
  set.has(branch) ? set.delete(branch) : set.add(branch);
  set.size ? state.off.set(block, set) : state.off.delete(block);
  drawBoard();
  predict();
}

function setOff(text) {
  state.off = new Map();
  for (const item of (text || "").split(",").filter(Boolean)) {
    const [block, branch] = [item.slice(0, item.lastIndexOf(":")), Number(item.slice(item.lastIndexOf(":") + 1))];
    if (!state.off.has(block)) state.off.set(block, new Set());
    state.off.get(block).add(branch);
  }
}

async function findKnockout() {
  $("knockout-line").textContent = "searching…";
  try {
    const k = await api("/api/knockout", { ...source(), mode: state.mode });
    setOff(k.off.join(","));
    $("knockout-line").textContent = k.found
      ? `${k.off.join(", ")} changes the prediction (${k.method}, ${k.evaluations} evaluations)`
      : `no set of up to ${k.off.length} branches found (${k.method})`;
    drawBoard();
    predict();
  } catch (error) {
    showError(error);
  }
}

async function runInspect() {
  const limit = Number($("inspect-limit").value);
  try {
    await api("/api/inspect", { limit });
    $("inspect-progress").hidden = false;
    for (;;) {
      await new Promise((resolve) => setTimeout(resolve, 500));
      const job = await api("/api/inspect");
      if (job.total) $("inspect-progress").value = job.done / job.total;
      if (job.state === "failed") throw new Error(job.error);
      if (job.state === "done") break;
    }
    state.run = await api("/api/run");
    drawBoard();
  } catch (error) {
    showError(error);
  }
}

// ---------------------------------------------------------------------------------------------- anatomy

async function selectBlock(block) {
  state.block = block;
  drawBoard();
  try {
    const a = await api("/api/anatomy", { ...source(), block });
    $("anatomy-title").textContent = `${a.block} (${a.kind}), input ${a.input_shape.join("×")}`;
    $("concat").replaceChildren(...a.branches.map((b) => {
      const part = el("div", { class: `c${b.branch}`, textContent: `${b.channels}`,
        title: `branch ${b.branch}: channels ${b.channel_range[0]}–${b.channel_range[1] - 1} of the output` });
      part.style.flex = `${b.channels}`;
      return part;
    }));
    $("anatomy").replaceChildren(...a.branches.map((b) => el("div", { class: `branch` }, [
      el("strong", { textContent: `branch ${b.branch}` }),
      el("div", { class: "note", textContent: `${b.channels} ch, ${b.shape.slice(1).join("×")}` }),
      el("div", { class: "note", textContent: `${b.params.toLocaleString()} params` }),
      el("div", { class: "note", textContent: `${(b.macs / 1e6).toFixed(2)} M mult-adds` }),
      el("div", {}, b.tiles.map((t) => el("img", { src: t.src, alt: `channel ${t.channel}`,
        title: `channel ${t.channel}` }))),
    ])));
    drawSpecialists(block);
  } catch (error) {
    showError(error);
  }
}

async function drawSpecialists(block) {
  $("specialists-title").textContent = `(${block})`;
  const s = await api(`/api/specialists?block=${encodeURIComponent(block)}`);
  $("specialists").replaceChildren(...s.branches.map((b) => el("div", { class: "row" }, [
    el("span", { textContent: `branch ${b.branch}` }), ...b.images.map(thumb)])));
}

function thumb(t) {
  return el("img", { src: t.src, alt: `test image ${t.index}`,
    title: `test image ${t.index} (${state.run.classes[t.label]})`, onclick: () => openImage(t.index) });
}

// ------------------------------------------------------------------------------- sizes, curves, confusion

async function drawSize() {
  const size = Number($("size").value);
  $("size-value").textContent = size;
  const s = await api(`/api/size?size=${size}`);
  $("size-line").textContent = s.ok ? `${state.run.model} accepts ${s.accepted}` : s.error;
  $("stages").replaceChildren(el("tr", {}, [el("th", { textContent: "stage" }), el("th", { textContent: "shape" }),
    el("th", { textContent: "params" })]), ...(s.stages || []).filter((r) => r.shape).map((r) => el("tr", {}, [
    el("td", { textContent: r.name }), el("td", { textContent: r.shape.join("×") }),
    el("td", { textContent: r.params.toLocaleString() })])));
  $("costs").replaceChildren(el("tr", {}, [el("th", { textContent: "model" }), el("th", { textContent: "params" }),
    el("th", { textContent: `GFLOP at ${size}` })]), ...s.costs.map((c) => el("tr", {}, [
    el("td", { textContent: c.model }), el("td", { textContent: `${(c.params / 1e6).toFixed(2)} M` }),
    el("td", { textContent: c.gflops_at_size === null ? "too small" : c.gflops_at_size.toFixed(3) })])));
}

function drawCurves() {
  const rows = state.run.metrics;
  const svg = $("curves");
  const keys = [["train_loss", "#4a78c2"], ["test_loss", "#8a5ab0"], ["train_acc", "#d0722a"], ["test_acc", "#3a9a5b"]];
  if (!rows.length) {
    $("curves-legend").textContent = "no metrics.jsonl rows";
    return;
  }
  const top = Math.max(1, ...rows.flatMap((r) => keys.map(([k]) => (Number.isFinite(r[k]) ? r[k] : 0))));
  const x = (i) => (rows.length === 1 ? 210 : 20 + (380 * i) / (rows.length - 1));
  const y = (v) => 190 - (180 * v) / top;
  const ns = "http://www.w3.org/2000/svg";
  svg.replaceChildren(...keys.map(([k, colour]) => {
    const line = document.createElementNS(ns, "polyline");
    line.setAttribute("points", rows.map((r, i) => `${x(i)},${y(r[k] || 0)}`).join(" "));
    line.setAttribute("stroke", colour);
    return line;
  }));
  const last = rows[rows.length - 1];
  $("curves-legend").textContent = `${rows.length} epochs; blue train loss, purple test loss, orange train acc, `
    + `green test acc (last: ${(last.test_acc ?? 0).toFixed(4)}); y up to ${top.toFixed(2)}`;
}

async function drawConfusion() {
  const c = await api("/api/confusion");
  $("confusion-note").textContent = `(first ${c.count} test images; rows true, columns predicted)`;
  const head = el("tr", {}, [el("th"), ...c.classes.map((n, j) => el("th", { textContent: `${j}`, title: n }))]);
  $("confusion").replaceChildren(head, ...c.matrix.map((row, i) => el("tr", {}, [
    el("th", { textContent: c.classes[i] }),
    ...row.map((n, j) => el("td", { textContent: n, class: i === j ? "diag" : "",
      title: `${c.classes[i]} taken for ${c.classes[j]}`, onclick: () => drawPair(i, j) }))])));
}

async function drawPair(i, j) {
  const p = await api(`/api/pair?true=${i}&predicted=${j}`);
  $("pair").replaceChildren(el("div", { class: "note",
    textContent: `${state.run.classes[i]} taken for ${state.run.classes[j]}: ${p.images.length} images` }),
    ...p.images.map(thumb));
}

// ------------------------------------------------------------------------------------------ images in

function openImage(index) {
  state.image = index;
  state.upload = null;
  $("image-index").value = index;
  predict();
  if (state.block) selectBlock(state.block);
}

async function uploadBlob(blob, invert) {
  try {
    const u = await api(`/api/upload?invert=${invert}`, blob, true);
    state.upload = u.upload;
    predict();
    if (state.block) selectBlock(state.block);
  } catch (error) {
    showError(error);
  }
}

function setupCanvas() {
  const canvas = $("canvas");
  const ctx = canvas.getContext("2d");
  const clear = () => { ctx.fillStyle = "#000"; ctx.fillRect(0, 0, canvas.width, canvas.height); };
  clear();
  let drawing = false;
  const at = (e) => { const r = canvas.getBoundingClientRect(); return [e.clientX - r.left, e.clientY - r.top]; };
  canvas.addEventListener("pointerdown", (e) => { drawing = true; ctx.beginPath(); ctx.moveTo(...at(e)); });
  canvas.addEventListener("pointermove", (e) => {
    if (!drawing) return;
    ctx.lineTo(...at(e));
    Object.assign(ctx, { strokeStyle: "#fff", lineWidth: 12, lineCap: "round" });
    ctx.stroke();
  });
  window.addEventListener("pointerup", () => { drawing = false; });
  $("canvas-clear").addEventListener("click", clear);
  $("canvas-use").addEventListener("click", () => canvas.toBlob((blob) => uploadBlob(blob, "no"), "image/png"));
}

async function main() {
  const params = new URLSearchParams(location.search);
  state.image = Number(params.get("image") || 0);
  state.mode = params.get("mode") === "mean" ? "mean" : "zero";
  setOff(params.get("off"));
  try {
    state.run = await api("/api/run");
  } catch (error) {
    showError(error);
    return;
  }
  const r = state.run;
  $("run-line").textContent = `${r.model} at ${r.image_size} px, ${r.classes.length} classes, ${r.run_dir}`;
  $("image-index").max = r.test_count - 1;
  $("image-index").value = state.image;
  document.querySelector(`input[name=mode][value=${state.mode}]`).checked = true;
  $("size").max = Math.max(4 * r.natural_size, 2 * r.image_size);
  $("size").value = r.image_size;
  $("image-open").addEventListener("click", () => openImage(Number($("image-index").value)));
  $("upload").addEventListener("change", (e) => e.target.files[0] && uploadBlob(e.target.files[0], "auto"));
  $("all-on").addEventListener("click", () => { state.off = new Map(); drawBoard(); predict(); });
  $("knockout").addEventListener("click", findKnockout);
  $("inspect-run").addEventListener("click", runInspect);
  $("size").addEventListener("change", drawSize);
  $("size").addEventListener("input", () => { $("size-value").textContent = $("size").value; });
  for (const radio of document.querySelectorAll("input[name=mode]")) {
    radio.addEventListener("change", () => { state.mode = radio.value; drawBoard(); predict(); });
  }
  setupCanvas();
  drawBoard();
  drawCurves();
  await predict();
  state.block = r.blocks[0].block;
  await Promise.allSettled([selectBlock(state.block), drawSize(), drawConfusion()]);
  document.body.dataset.loaded = "all";
}

main();
