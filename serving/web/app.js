// The search page: one image in, the gallery's nearest codes out, as pictures. Plain JS, no build step;
// it speaks the server's own REST API (:search, :predict with super_resolve, the previews, /ui/info).
"use strict";

const $ = (id) => document.getElementById(id);
let info = null;
let lastQuery = null; // {blob, caption}: re-searched when k or the re-rank switch changes

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

async function api(path, body) {
  const response = await fetch(path, body === undefined ? {} : {
    method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body),
  });
  let data = null;
  try { data = await response.json(); } catch (e) { /* not JSON */ }
  if (!response.ok) {
    const reason = data && data.error ? data.error : `${response.status} ${response.statusText}`;
    throw new Error(`The server refused the query: ${reason}`);
  }
  return data;
}

function modelLine(i) {
  const sizes = i.query_sizes ? `trained for queries of ${i.query_sizes[0]}–${i.query_sizes[1]} px` : "";
  return `${i.model} version ${i.version}: method ${i.method}, ${i.bits}-bit codes, ${sizes}; ` +
         `gallery of ${i.gallery.toLocaleString()} images` + (i.previews ? "" : " (indexed without previews)");
}

async function loadInfo() {
  try {
    info = await api("/ui/info");
  } catch (e) {
    $("model").textContent = "No model is being served yet (the server is still loading, or has no version).";
    setTimeout(loadInfo, 3000);
    return;
  }
  $("model").textContent = modelLine(info);
  $("k").max = String(info.max_k);
  $("label-names").replaceChildren(...(info.label_names || []).map((n) => Object.assign(document.createElement("option"), {value: n})));
  $("api-link").href = `/v1/models/${encodeURIComponent(info.model)}`;
  $("rerank-box").hidden = !info.rerank;
  const samples = $("samples");
  samples.replaceChildren();
  for (const s of info.samples) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "sample";
    button.title = `a 4× smaller copy of ${s.id}`;
    button.setAttribute("aria-label", `search with a 4 times smaller copy of gallery image ${s.id}`);
    const img = document.createElement("img");
    img.src = previewUrl(s.row);
    img.alt = "";
    button.append(img);
    button.addEventListener("click", () => sampleQuery(s));
    samples.append(button);
  }
  $("samples-box").hidden = info.samples.length === 0;
}

function previewUrl(row) {
  return `/v1/models/${encodeURIComponent(info.model)}/versions/${info.version}/generations/${info.generation}/previews/${row}`;
}

async function sampleQuery(s) {
  showError("");
  try {
    const img = await loadImage(previewUrl(s.row));
    const w = Math.max(8, Math.round(img.naturalWidth / 4)), h = Math.max(8, Math.round(img.naturalHeight / 4));
    const canvas = document.createElement("canvas");
    canvas.width = w; canvas.height = h;
    const ctx = canvas.getContext("2d");
    ctx.imageSmoothingQuality = "high";
    ctx.drawImage(img, 0, 0, w, h);
    const blob = await new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
    await search(blob, `a ${w}×${h} copy of gallery image ${s.id}`);
  } catch (e) {
    showError(String(e.message || e));
  }
}

function loadImage(src) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error(`could not load ${src}`));
    img.src = src;
  });
}

function toBase64(blob) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result).split(",", 2)[1] || "");
    reader.onerror = () => reject(new Error("could not read the file"));
    reader.readAsDataURL(blob);
  });
}

function filterValue() {  // the :search "filter": hits with any of the labels, under the folder
  const labels = $("labels").value.split(",").map((s) => s.trim()).filter((s) => s);
  const folder = $("folder").value.trim();
  if (!labels.length && !folder) return null;
  return {...(labels.length ? {labels} : {}), ...(folder ? {folder} : {})};
}

function kValue() {
  const k = parseInt($("k").value, 10);
  if (!Number.isInteger(k) || k < 1) return 10;
  return Math.min(k, info ? info.max_k : 1000);
}

async function search(blob, caption) {
  if (!info) throw new Error("no model is being served yet");
  lastQuery = {blob, caption};
  showError("");
  const b64 = await toBase64(blob);
  const url = URL.createObjectURL(blob);
  $("sent").src = url;
  $("sent").onload = () => {
    $("sent-caption").textContent = `query as sent: ${caption} (${$("sent").naturalWidth}×${$("sent").naturalHeight} px)`;
  };
  $("seen").hidden = false;
  const name = encodeURIComponent(info.model);
  const signature = info.query_input === "hr" ? "encode_hr" : "serving_default";
  const body = {instances: [{b64}], k: kValue(), signature_name: signature};
  const where = filterValue();
  if (where) body.filter = where;
  const started = performance.now();
  const wanted = [api(`/v1/models/${name}/versions/${info.version}:search`, body)];
  if (info.rerank && $("rerank").checked) {
    wanted.push(api(`/v1/models/${name}/versions/${info.version}:search`, {...body, rerank: {shortlist: 1000}}));
  }
  let answers;
  try {
    answers = await Promise.all(wanted);
  } catch (e) {
    $("results-panel").hidden = true;
    showError(String(e.message || e));
    return;
  }
  const roundTrip = performance.now() - started;
  const t = answers[0].timing || {};
  $("timing").textContent = `encode ${fmt(t.encode_ms)} ms, search ${fmt(t.search_ms)} ms on the server` +
    (t.batch_images > 1 ? ` (in a batch of ${t.batch_images} images)` : "") + `; ${roundTrip.toFixed(0)} ms round trip`;
  const orders = $("orders");
  orders.replaceChildren();
  orders.className = "orders";
  answers.forEach((answer, i) => {
    const title = answers.length > 1 ? (i === 0 ? "Global codes (Hamming order)" : "Re-ranked with local codes") : "";
    orders.append(resultList(answer, title));
  });
  const warning = answers[0].results[0].warning;
  $("warning").textContent = warning ? `Note: ${warning}` : "";
  $("warning").hidden = !warning;
  $("results-panel").hidden = false;
  showEncoded(b64, signature).catch((e) => { $("encoded-caption").textContent = `(not shown: ${e.message})`; });
}

function fmt(x) {
  return x === undefined ? "?" : Number(x).toFixed(1);
}

function resultList(answer, title) {
  const wrap = document.createElement("div");
  if (title) {
    const h = document.createElement("h3");
    h.textContent = title;
    wrap.append(h);
  }
  const r = answer.results[0];
  const list = document.createElement("ol");
  list.className = "grid";
  list.setAttribute("aria-label", title || "hits, nearest first");
  r.ids.forEach((id, i) => {
    const li = document.createElement("li");
    li.className = "hit";
    li.dataset.id = id;
    if (answer.previews) {
      const img = document.createElement("img");
      img.loading = "lazy";
      img.src = answer.previews + r.rows[i];
      img.alt = `gallery image ${id}`;
      li.append(img);
    }
    const head = document.createElement("div");
    const rank = document.createElement("span");
    rank.className = "rank";
    rank.textContent = `#${i + 1}`;
    const dist = document.createElement("span");
    dist.className = "dist";
    const d = r.rerank_distances ? `${r.rerank_distances[i]} (global ${r.distances[i]})` : `${r.distances[i]}`;
    dist.textContent = `d = ${d}`;
    dist.title = "Hamming distance";
    head.append(rank, dist);
    const idLine = document.createElement("div");
    idLine.className = "id";
    idLine.textContent = id;
    const labels = document.createElement("div");
    labels.className = "labels";
    labels.textContent = (r.labels[i] || []).filter((l) => l !== id).join(", ");
    li.append(head, idLine, labels);
    list.append(li);
  });
  wrap.append(list);
  return wrap;
}

async function showEncoded(b64, signature) {
  const canvas = $("encoded");
  if (signature === "encode_hr") {
    $("encoded-caption").textContent = "this model encodes HR queries as they are";
    return;
  }
  const out = await api(`/v1/models/${encodeURIComponent(info.model)}/versions/${info.version}:predict`,
                        {instances: [{b64}], signature_name: "super_resolve"});
  const sr = out.predictions[0].sr; // [H][W][3] uint8
  const h = sr.length, w = sr[0].length;
  canvas.width = w; canvas.height = h;
  const data = new ImageData(w, h);
  for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) {
    const o = (y * w + x) * 4, px = sr[y][x];
    data.data[o] = px[0]; data.data[o + 1] = px[1]; data.data[o + 2] = px[2]; data.data[o + 3] = 255;
  }
  canvas.getContext("2d").putImageData(data, 0, 0);
  const how = {sr: "super-resolved by SRNet", bicubic: "brought to size by bicubic", fsr: "bicubic (features enhanced)",
               hr: "as sent"}[info.query_path] || info.query_path;
  $("encoded-caption").textContent = `what the model encodes: ${w}×${h} px, ${how}`;
}

function fromFiles(files) {
  const file = files && files[0];
  if (!file) return;
  search(file, file.name || "your image").catch((e) => showError(String(e.message || e)));
}

$("file").addEventListener("change", (e) => { fromFiles(e.target.files); e.target.value = ""; });
const drop = $("drop");
drop.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); $("file").click(); } });
for (const type of ["dragenter", "dragover"]) drop.addEventListener(type, (e) => { e.preventDefault(); drop.classList.add("over"); });
for (const type of ["dragleave", "drop"]) drop.addEventListener(type, () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => { e.preventDefault(); fromFiles(e.dataTransfer.files); });
document.addEventListener("paste", (e) => {
  const item = [...(e.clipboardData ? e.clipboardData.items : [])].find((x) => x.type.startsWith("image/"));
  if (item) fromFiles([item.getAsFile()]);
});
for (const id of ["labels", "folder"]) {
  $(id).addEventListener("change", () => { if (lastQuery) search(lastQuery.blob, lastQuery.caption).catch((e) => showError(String(e.message || e))); });
}
$("k").addEventListener("change", () => { if (lastQuery) search(lastQuery.blob, lastQuery.caption).catch((e) => showError(String(e.message || e))); });
$("rerank").addEventListener("change", () => { if (lastQuery) search(lastQuery.blob, lastQuery.caption).catch((e) => showError(String(e.message || e))); });
loadInfo();
