// The draw-a-digit page: draw with Pointer Events, hand the drawing to a backend, show the 28×28
// input, the class probabilities and the conv1/conv2 feature maps.
// The backend is the server's JSON API (`mnist-cnn serve`), or the network itself running in this
// page (`mnist-cnn export --web`: static/model.js and static/net.js load before this script).
// No libraries and nothing fetched from elsewhere: the page talks to its own server, or to nobody.
"use strict";

const INK_WIDTH = 22; // stroke width in pad pixels (pad 280×280 ≈ MNIST's 2–3 px strokes at 28×28)
const DEBOUNCE_MS = 60; // wait this long after the last stroke change before asking again
const GRID = {
  // maps per row, gap between maps in native pixels, enlargement shown by CSS (integer: crisp)
  conv1: { cols: 8, gap: 2 },
  conv2: { cols: 8, gap: 1 },
};
const GAP_RGB = [255, 255, 255];

const $ = (id) => document.getElementById(id);
const pad = $("pad");
const ctx = pad.getContext("2d");
let classes = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];
let hasInk = false; // something drawn since the last clear
let mode = "draw"; // "draw" or "test" (a test digit is on the pad)
let lastResult = null;
let inFlight = false;
let pending = false;
let timer = null;

// ------------------------------------------------------------------ colour map (viridis)

const VIRIDIS = [
  [68, 1, 84], [72, 40, 120], [62, 74, 137], [49, 104, 142], [38, 130, 142],
  [31, 158, 137], [53, 183, 121], [109, 205, 89], [180, 222, 44], [253, 231, 37],
];
const LUT = new Uint8ClampedArray(256 * 3);
for (let i = 0; i < 256; i++) {
  const t = (i / 255) * (VIRIDIS.length - 1);
  const k = Math.min(Math.floor(t), VIRIDIS.length - 2);
  const f = t - k;
  for (let c = 0; c < 3; c++) {
    LUT[i * 3 + c] = Math.round(VIRIDIS[k][c] * (1 - f) + VIRIDIS[k + 1][c] * f);
  }
}

// ------------------------------------------------------------------ drawing

function clearPad() {
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, pad.width, pad.height);
  hasInk = false;
}

function padPoint(ev) {
  const r = pad.getBoundingClientRect();
  return [((ev.clientX - r.left) / r.width) * pad.width, ((ev.clientY - r.top) / r.height) * pad.height];
}

let drawing = null; // the pointer id that is drawing, and its last point

function startStroke(ev) {
  if (drawing !== null || (ev.pointerType === "mouse" && ev.button !== 0)) return;
  ev.preventDefault();
  if (mode === "test") {
    clearPad();
    mode = "draw";
    showSource("Draw a digit from 0 to 9 in the box.");
  }
  pad.setPointerCapture(ev.pointerId);
  const [x, y] = padPoint(ev);
  drawing = { id: ev.pointerId, x, y };
  ctx.fillStyle = "#fff";
  ctx.beginPath();
  ctx.arc(x, y, INK_WIDTH / 2, 0, 2 * Math.PI);
  ctx.fill();
  hasInk = true;
  schedule();
}

function moveStroke(ev) {
  if (drawing === null || ev.pointerId !== drawing.id) return;
  ev.preventDefault();
  const events = ev.getCoalescedEvents ? ev.getCoalescedEvents() : [];
  ctx.strokeStyle = "#fff";
  ctx.lineWidth = INK_WIDTH;
  ctx.lineCap = "round";
  ctx.lineJoin = "round";
  ctx.beginPath();
  ctx.moveTo(drawing.x, drawing.y);
  for (const e of events.length ? events : [ev]) {
    const [x, y] = padPoint(e);
    ctx.lineTo(x, y);
    drawing.x = x;
    drawing.y = y;
  }
  ctx.stroke();
  schedule();
}

function endStroke(ev) {
  if (drawing === null || ev.pointerId !== drawing.id) return;
  drawing = null;
  schedule(0);
}

pad.addEventListener("pointerdown", startStroke);
pad.addEventListener("pointermove", moveStroke);
pad.addEventListener("pointerup", endStroke);
pad.addEventListener("pointercancel", endStroke);

// ------------------------------------------------------------------ backends
// Both answer in the server's JSON shapes (see /docs); in the page backend the base64 "data"
// fields are Uint8Arrays already. A backend throws an Error whose message is shown to the reader.
// predict(canvas, params) and randomTestDigit(params): params are extra query parameters for
// the server's API (activations=true is always asked for); the page backend ignores them.

function query(params) {
  return new URLSearchParams({ activations: "true", ...params }).toString();
}

function serverBackend() {
  async function ask(url, options) {
    let res;
    let body;
    try {
      res = await fetch(url, options);
      body = await res.json();
    } catch (err) {
      throw new Error(`cannot reach the server (${err.message})`);
    }
    if (!res.ok) throw new Error(body.detail || `the server answered ${res.status}`);
    return body;
  }
  return {
    inPage: false,
    info: () => ask("/api/info"),
    async predict(canvas, params = {}) {
      const blob = await new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
      return ask(`/api/predict?${query(params)}`, {
        method: "POST",
        headers: { "Content-Type": "image/png" },
        body: blob,
      });
    },
    randomTestDigit: (params = {}) => ask(`/api/random-test-digit?${query(params)}`),
  };
}

function pageBackend(model, Net) {
  const net = Net.load(model);
  const side = Net.SIDE;
  const digits = model.test_digits ? Net.decodeBase64(model.test_digits.images) : null;

  // As serve.py's encode_maps: each map scaled to its own [min, max] and quantised to uint8.
  function encodeMaps(values, n, h, w) {
    const q = new Uint8Array(n * h * w);
    const min = [];
    const max = [];
    for (let m = 0; m < n; m++) {
      const map = values.subarray(m * h * w, (m + 1) * h * w);
      let lo = Infinity;
      let hi = -Infinity;
      for (const v of map) {
        lo = Math.min(lo, v);
        hi = Math.max(hi, v);
      }
      const span = hi > lo ? hi - lo : 1;
      for (let i = 0; i < map.length; i++) q[m * h * w + i] = Math.round(((map[i] - lo) / span) * 255);
      min.push(lo);
      max.push(hi);
    }
    return { shape: [n, h, w], min, max, data: q };
  }

  function run(image) {
    const x = Float32Array.from(image, (v) => v / 255);
    const out = Net.forward(net, x);
    const probabilities = Net.softmax(out.logits);
    const c = model.config;
    return {
      prediction: probabilities.indexOf(Math.max(...probabilities)),
      probabilities,
      input: { shape: [side, side], data: image },
      activations: {
        conv1: encodeMaps(out.conv1, c.conv1_channels, side, side),
        conv2: encodeMaps(out.conv2, c.conv2_channels, side / 2, side / 2),
      },
    };
  }

  return {
    inPage: true,
    net,
    run,
    async info() {
      return {
        run: model.run,
        dataset: model.dataset,
        classes: model.classes,
        step: model.step,
        test_accuracy: model.test_accuracy,
        test_digits: digits ? model.test_digits.labels.length : 0,
      };
    },
    async predict(canvas) {
      const { width, height } = canvas;
      const rgba = canvas.getContext("2d").getImageData(0, 0, width, height).data;
      return run(Net.preprocess(Net.grayFromRGBA(rgba, height, width), height, width));
    },
    async randomTestDigit() {
      if (!digits) throw new Error("this page was exported without test digits");
      const labels = model.test_digits.labels;
      const index = Math.floor(Math.random() * labels.length);
      const result = run(digits.slice(index * side * side, (index + 1) * side * side));
      const label = labels[index];
      return { ...result, index: model.test_digits.indices[index], label, correct: result.prediction === label };
    },
  };
}

const backend = window.MNIST_CNN_MODEL
  ? pageBackend(window.MNIST_CNN_MODEL, window.MnistNet)
  : serverBackend();
// Milliseconds from asking the backend about the pad to the answer drawn (bars and maps), newest
// last: what the page costs per update (read by the tests and benchmarks/web_page.py).
const updateTimes = (window.mnistCnnUpdateTimes = []);
// True when the page has nothing to ask: no request out, none queued behind one, none timed.
window.mnistCnnIdle = () => !inFlight && !pending && timer === null;

// ------------------------------------------------------------------ asking the backend

function cancelScheduled() {
  clearTimeout(timer);
  timer = null;
}

function schedule(delay = DEBOUNCE_MS) {
  cancelScheduled();
  timer = setTimeout(() => {
    timer = null;
    predictDrawing();
  }, delay);
}

async function predictDrawing() {
  if (mode !== "draw" || !hasInk) return;
  if (inFlight) {
    pending = true; // ask again with the newest drawing once this answer is in
    return;
  }
  inFlight = true;
  pending = false;
  try {
    const started = performance.now();
    const body = await backend.predict(pad, explainParams());
    if (mode !== "draw" || !hasInk) return; // a test digit arrived, or the pad was cleared, meanwhile
    showStatus("");
    show(body, null);
    updateTimes.push(performance.now() - started);
  } catch (err) {
    if (mode === "draw") showStatus(err.message, true);
  } finally {
    inFlight = false;
    if (pending) schedule(0);
  }
}

async function randomTestDigit(index = null) {
  cancelScheduled();
  pending = false;
  try {
    const body = await backend.randomTestDigit({ ...(index === null ? {} : { index }), ...explainParams() });
    mode = "test";
    paintTestDigit(body.input);
    showSource(
      `Test image #${body.index}, labelled ${classes[body.label]}. ` +
        (body.correct ? "The network gets it right." : "The network gets it wrong.")
    );
    showStatus("");
    show(body, body.label);
  } catch (err) {
    showStatus(err.message, true);
  }
}

$("clear").addEventListener("click", () => {
  cancelScheduled();
  pending = false;
  mode = "draw";
  clearPad();
  showSource("Draw a digit from 0 to 9 in the box.");
  showStatus("");
  showEmpty();
});
$("random").addEventListener("click", () => randomTestDigit());
$("scale").addEventListener("change", () => {
  if (lastResult) drawAllMaps(lastResult.activations);
});

// ------------------------------------------------------------------ showing an answer

function decode(b64) {
  if (typeof b64 !== "string") return b64; // the page backend hands over bytes
  const raw = atob(b64);
  const out = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) out[i] = raw.charCodeAt(i);
  return out;
}

function paintGray(canvas, encoded) {
  const [h, w] = encoded.shape;
  const px = decode(encoded.data);
  const img = new ImageData(w, h);
  for (let i = 0; i < w * h; i++) {
    img.data[4 * i] = img.data[4 * i + 1] = img.data[4 * i + 2] = px[i];
    img.data[4 * i + 3] = 255;
  }
  canvas.getContext("2d").putImageData(img, 0, 0);
}

function paintTestDigit(encoded) {
  const small = document.createElement("canvas");
  small.width = encoded.shape[1];
  small.height = encoded.shape[0];
  paintGray(small, encoded);
  clearPad();
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(small, 0, 0, pad.width, pad.height);
}

function show(result, label) {
  lastResult = result;
  paintGray($("input"), result.input);
  const top = result.prediction;
  $("prediction").textContent = classes[top];
  $("prediction").classList.toggle("long", classes[top].length > 2);
  $("confidence").textContent = `${(100 * result.probabilities[top]).toFixed(1)}% sure`;
  $("mistake").hidden = label === null || label === top;
  const rows = $("bars").children;
  result.probabilities.forEach((p, k) => {
    const row = rows[k];
    row.querySelector(".fill").style.width = `${(100 * p).toFixed(1)}%`;
    row.querySelector(".pct").textContent = p > 0 && p < 0.0005 ? "<0.1%" : `${(100 * p).toFixed(1)}%`;
    row.classList.toggle("top", k === top);
    row.classList.toggle("label", label !== null && k === label);
  });
  drawAllMaps(result.activations);
  showWhy(result);
}

function showEmpty() {
  lastResult = null;
  $("input").getContext("2d").clearRect(0, 0, 28, 28);
  $("prediction").textContent = "–";
  $("confidence").innerHTML = "&nbsp;";
  $("mistake").hidden = true;
  for (const row of $("bars").children) {
    row.querySelector(".fill").style.width = "0";
    row.querySelector(".pct").textContent = "";
    row.classList.remove("top", "label");
  }
  for (const name of Object.keys(GRID)) {
    const c = $(name);
    c.getContext("2d").clearRect(0, 0, c.width, c.height);
  }
  showWhy(null);
}

function drawAllMaps(activations) {
  if (!activations) return;
  for (const name of Object.keys(GRID)) {
    if (activations[name]) drawMaps($(name), activations[name], GRID[name]);
  }
}

// One canvas per layer, maps tiled in a grid at native size; CSS enlarges it without smoothing.
function drawMaps(canvas, enc, grid) {
  const [n, h, w] = enc.shape;
  const rows = Math.ceil(n / grid.cols);
  const width = grid.cols * w + (grid.cols - 1) * grid.gap;
  const height = rows * h + (rows - 1) * grid.gap;
  if (canvas.width !== width || canvas.height !== height) {
    canvas.width = width;
    canvas.height = height;
  }
  const q = decode(enc.data);
  const perLayer = $("scale").value === "layer";
  const layerMax = Math.max(...enc.max);
  const img = new ImageData(width, height);
  for (let i = 0; i < width * height; i++) {
    img.data.set(GAP_RGB, 4 * i);
    img.data[4 * i + 3] = 255;
  }
  for (let m = 0; m < n; m++) {
    const x0 = (m % grid.cols) * (w + grid.gap);
    const y0 = Math.floor(m / grid.cols) * (h + grid.gap);
    const lo = enc.min[m];
    const span = enc.max[m] - lo;
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < w; x++) {
        let level = q[m * h * w + y * w + x];
        if (perLayer) {
          const value = lo + (level / 255) * span;
          level = layerMax > 0 ? Math.round((255 * Math.max(value, 0)) / layerMax) : 0;
        }
        const o = 4 * ((y0 + y) * width + x0 + x);
        img.data[o] = LUT[3 * level];
        img.data[o + 1] = LUT[3 * level + 1];
        img.data[o + 2] = LUT[3 * level + 2];
      }
    }
  }
  canvas.getContext("2d").putImageData(img, 0, 0);
}

function showStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

function showSource(text) {
  $("source").textContent = text;
}

// ------------------------------------------------------------------ start

function buildBars() {
  const list = $("bars");
  list.textContent = "";
  list.classList.toggle("long-names", classes.some((c) => c.length > 2));
  for (const name of classes) {
    const li = document.createElement("li");
    li.innerHTML = '<span class="name"></span><span class="track"><span class="fill"></span></span><span class="pct"></span>';
    li.querySelector(".name").textContent = name;
    list.appendChild(li);
  }
}

function sizeMapCanvases() {
  // Start at the final size (blank) so the layout does not jump at the first answer.
  const shapes = { conv1: [32, 28, 28], conv2: [64, 14, 14] };
  for (const [name, [n, h, w]] of Object.entries(shapes)) {
    const g = GRID[name];
    const rows = Math.ceil(n / g.cols);
    $(name).width = g.cols * w + (g.cols - 1) * g.gap;
    $(name).height = rows * h + (rows - 1) * g.gap;
  }
}

async function loadInfo() {
  try {
    const info = await backend.info();
    classes = info.classes;
    buildBars();
    const parts = [`run ${info.run}`, info.dataset];
    if (info.step != null) parts.push(`step ${info.step}`);
    if (info.test_accuracy != null) parts.push(`test accuracy ${(100 * info.test_accuracy).toFixed(2)}%`);
    if (backend.inPage) parts.push("running in this page");
    $("run-info").textContent = parts.join(" · ");
    if (!info.test_digits) {
      $("random").disabled = true;
      $("random").title = "the test set is not available on this server";
    }
  } catch (err) {
    showStatus(err.message, true);
  }
}

if (backend.inPage) document.querySelector("header nav")?.remove(); // no API without a server
clearPad();
buildBars();
sizeMapCanvases();
loadInfo();

// ------------------------------------------------------------------ why, and "not a digit"
// The server computes the attribution (integrated gradients) when asked: one request per update.

function explainParams() {
  return $("explain").checked ? { explain: "true" } : {};
}

function showWhy(result) {
  $("not-digit").hidden = !(result && result.not_a_digit);
  const canvas = $("attribution");
  const c = canvas.getContext("2d");
  c.clearRect(0, 0, canvas.width, canvas.height);
  const enc = result && $("explain").checked ? result.attribution : null;
  if (!enc) return;
  const q = decode(enc.data);
  const lo = enc.min[0];
  const hi = enc.max[0];
  const limit = Math.max(Math.abs(lo), Math.abs(hi)) || 1;
  const img = new ImageData(enc.shape[2], enc.shape[1]);
  for (let i = 0; i < q.length; i++) {
    const v = (lo + (q[i] / 255) * (hi - lo)) / limit; // -1 (against) … +1 (for)
    const alpha = Math.round(230 * Math.min(1, Math.abs(v)));
    img.data.set(v > 0 ? [255, 40, 40, alpha] : [50, 100, 255, alpha], 4 * i);
  }
  c.putImageData(img, 0, 0);
}

$("explain").addEventListener("change", () => {
  if (mode === "test" && lastResult && lastResult.index !== undefined) randomTestDigit(lastResult.index);
  else if (mode === "draw" && hasInk) schedule(0);
  else showWhy(lastResult);
});
// Only the server computes attributions: the page backend has no such box.
if (backend.inPage) $("explain").closest("label").hidden = true;
