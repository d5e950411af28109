// The static page's colorizer: the ONNX model run by onnxruntime-web, entirely in this browser.
// The pipeline reproduces Colorizer.colorize (colorizer.py) and the Lab formulas of images.py:
// L of the full-size photo -> area-averaged to the render size -> padded to the network's multiple
// -> the network's ab, times the saturation -> bilinear back to full size -> Lab with the photo's
// own L -> sRGB. Nothing is fetched from anywhere but this page's own origin.

const VENDOR = new URL("vendor/", import.meta.url).href;
const ORT_BUNDLE = VENDOR + "ort.webgpu.min.mjs";  // fetched by web/fetch_ort.py
const DEFAULT_MODEL = new URL("../weights/colorizer.onnx", import.meta.url).href;
// What an exported model's metadata ("colorizer" in metadata_props) says; used when it says nothing.
const DEFAULTS = { multiple: 64, render_size: 256, saturation: 1.0 };
const HINT_CHANNELS = 3;  // a model with a hints input takes (1, 3, h, w); all zeros: no hints
const MAX_PIXELS = 40_000_000;  // a photo above this is refused: the page holds about 20 bytes a pixel

// -----------------------------------------------------------------------------
// Lab <-> sRGB (images.rgb_to_lab / lab_to_rgb: scikit-image's formulas, D65, 2 degree observer)

const XYZ_FROM_RGB = [0.412453, 0.357580, 0.180423,
                      0.212671, 0.715160, 0.072169,
                      0.019334, 0.119193, 0.950227];
const RGB_FROM_XYZ = invert3(XYZ_FROM_RGB);
const WHITE = [0.95047, 1.0, 1.08883];
const AB_SCALE = 110;  // the network's ab in [-1, 1] is Lab a, b / 110; its L is Lab L / 50 - 1

function invert3(m) {
  const [a, b, c, d, e, f, g, h, i] = m;
  const A = e * i - f * h, B = f * g - d * i, C = d * h - e * g;
  const det = a * A + b * B + c * C;
  return [A / det, (c * h - b * i) / det, (b * f - c * e) / det,
          B / det, (a * i - c * g) / det, (c * d - a * f) / det,
          C / det, (b * g - a * h) / det, (a * e - b * d) / det];
}

// sRGB -> linear light for every 8-bit value: the pixels are 8-bit, so a table is exact
const LINEAR = Float64Array.from({ length: 256 }, (_, v) => {
  const c = v / 255;
  return c > 0.04045 ? ((c + 0.055) / 1.055) ** 2.4 : c / 12.92;
});

/** The network's L (Lab L / 50 - 1) of every pixel of RGBA bytes; colour is discarded. */
export function luminance(rgba, n) {
  const L = new Float32Array(n);
  const [r, g, b] = XYZ_FROM_RGB.slice(3, 6);
  for (let p = 0, q = 0; p < n; p++, q += 4) {
    const y = (r * LINEAR[rgba[q]] + g * LINEAR[rgba[q + 1]] + b * LINEAR[rgba[q + 2]]) / WHITE[1];
    const fy = y > 0.008856 ? Math.cbrt(Math.max(y, 1e-12)) : 7.787 * y + 16 / 116;
    L[p] = (116 * fy - 16) / 50 - 1;
  }
  return L;
}

function linearToSrgb(c) {
  return c > 0.0031308 ? 1.055 * Math.max(c, 1e-12) ** (1 / 2.4) - 0.055 : 12.92 * c;
}

function finv(f) {
  return f > 0.2068966 ? f * f * f : (f - 16 / 116) / 7.787;
}

// -----------------------------------------------------------------------------
// Resizing, as torch does it

/** Python's round(): halves go to the even neighbour. */
export function roundHalfEven(x) {
  const f = Math.floor(x), d = x - f;
  return d > 0.5 || (d === 0.5 && f % 2 !== 0) ? f + 1 : f;
}

/** images.render_shape: (h, w) of the network's view, the longer side renderSize, never enlarged. */
export function renderShape(H, W, renderSize) {
  const s = Math.min(renderSize, Math.max(H, W)) / Math.max(H, W);
  return [Math.max(1, roundHalfEven(H * s)), Math.max(1, roundHalfEven(W * s))];
}

/** F.adaptive_avg_pool2d along one axis: (outer, n, inner) -> (outer, m, inner); window i is
 *  [floor(i n / m), ceil((i + 1) n / m)). Pooling width then height is exact for a 2-D pool. */
function adaptivePool(src, outer, n, inner, m) {
  const dst = new Float32Array(outer * m * inner);
  for (let i = 0; i < m; i++) {
    const k0 = Math.floor((i * n) / m), k1 = Math.floor(((i + 1) * n + m - 1) / m);
    for (let o = 0; o < outer; o++) {
      const out = (o * m + i) * inner;
      for (let k = k0; k < k1; k++) {
        const s = (o * n + k) * inner;
        for (let j = 0; j < inner; j++) dst[out + j] += src[s + j];
      }
      for (let j = 0; j < inner; j++) dst[out + j] /= k1 - k0;
    }
  }
  return dst;
}

/** Bilinear source taps (align_corners=False), as torch computes them: [i0, i1, frac] for dst. */
function taps(dst, n, m) {
  const src = Math.max(0, ((dst + 0.5) * n) / m - 0.5);
  const i0 = Math.min(Math.floor(src), n - 1);
  return [i0, Math.min(i0 + 1, n - 1), src - i0];
}

/** (planes, h, w) -> (planes, h, W): each row resized bilinearly to W columns. */
function upsampleColumns(src, planes, h, w, W) {
  const dst = new Float32Array(planes * h * W);
  for (let x = 0; x < W; x++) {
    const [i0, i1, f] = taps(x, w, W);
    for (let r = 0; r < planes * h; r++) dst[r * W + x] = src[r * w + i0] * (1 - f) + src[r * w + i1] * f;
  }
  return dst;
}

/** (h, w) padded on the bottom and right to (hp, wp) by repeating the last row and column. */
function padReplicate(src, h, w, hp, wp) {
  const dst = new Float32Array(hp * wp);
  for (let y = 0; y < hp; y++) {
    const row = Math.min(y, h - 1) * w;
    for (let x = 0; x < wp; x++) dst[y * wp + x] = src[row + Math.min(x, w - 1)];
  }
  return dst;
}

// -----------------------------------------------------------------------------
// The model

/** metadata_props of an ONNX file (ModelProto field 14, key/value strings), read from its bytes. */
export function onnxMetadata(bytes) {
  const text = new TextDecoder();
  const props = {};
  let pos = 0;
  const varint = () => {
    let v = 0, scale = 1, b;
    do {
      if (pos >= bytes.length) throw new Error("truncated");
      b = bytes[pos++];
      v += (b & 0x7f) * scale;
      scale *= 128;
    } while (b & 0x80);
    return v;
  };
  const fields = (end, onString) => {  // walks one message, calling onString(field, start, end)
    while (pos < end) {
      const tag = varint(), field = Math.floor(tag / 8), wire = tag % 8;
      if (wire === 0) varint();
      else if (wire === 1) pos += 8;
      else if (wire === 5) pos += 4;
      else if (wire === 2) {
        const len = varint(), start = pos;
        pos += len;
        onString(field, start, pos);
      } else throw new Error(`wire type ${wire}`);
    }
    if (pos !== end) throw new Error("truncated");
  };
  fields(bytes.length, (field, start, end) => {
    if (field !== 14) return;
    const entry = {};
    const after = pos;
    pos = start;
    fields(end, (f, s, e) => { entry[f] = text.decode(bytes.subarray(s, e)); });
    pos = after;
    if (entry[1] !== undefined) props[entry[1]] = entry[2] ?? "";
  });
  return props;
}

/** The settings in a model's "colorizer" metadata, over DEFAULTS; [settings, what was wrong or null]. */
function modelSettings(bytes) {
  let meta;
  try {
    meta = onnxMetadata(bytes).colorizer;
  } catch (e) {
    return [{ ...DEFAULTS }, `its metadata could not be read (${e.message})`];
  }
  if (meta === undefined) return [{ ...DEFAULTS }, "no colorizer metadata"];
  let given;
  try {
    given = JSON.parse(meta);
  } catch {
    given = null;
  }
  if (typeof given !== "object" || given === null) {
    return [{ ...DEFAULTS }, "its colorizer metadata is not a JSON object"];
  }
  const settings = { ...DEFAULTS, about: typeof given.about === "string" ? given.about : "" };
  const bad = [];
  for (const [key, ok] of [["multiple", (v) => Number.isInteger(v) && v > 0],
                           ["render_size", (v) => Number.isInteger(v) && v > 0],
                           ["saturation", (v) => typeof v === "number" && v >= 0 && v < Infinity]]) {
    if (!(key in given)) continue;
    if (ok(given[key])) settings[key] = given[key];
    else bad.push(key);
  }
  return [settings, bad.length ? `ignored metadata ${bad.join(", ")}` : null];
}

async function webgpuAdapter() {
  if (new URLSearchParams(location.search).get("backend") === "wasm" || !navigator.gpu) return null;
  try {
    const adapter = await navigator.gpu.requestAdapter();
    const software = adapter?.isFallbackAdapter || adapter?.info?.isFallbackAdapter;
    return software ? null : adapter;  // a software adapter is slower than WebAssembly
  } catch {
    return null;
  }
}

/** An onnxruntime-web session on the model bytes: WebGPU when this browser has an adapter, else
 *  (or when WebGPU fails) WebAssembly on the CPU. Returns {session, backend, settings, note, hints, fallback}. */
async function loadModel(ort, bytes) {
  const [settings, note] = modelSettings(bytes);  // first: creating a session may take the buffer
  const tries = (await webgpuAdapter()) ? [["webgpu", "wasm"], ["wasm"]] : [["wasm"]];
  let session, backend, error;
  for (const eps of tries) {
    try {
      session = await ort.InferenceSession.create(bytes.slice(), { executionProviders: eps });
      backend = eps[0];
      break;
    } catch (e) {
      error = e;
    }
  }
  if (!session) throw new Error(`not an ONNX model onnxruntime-web can load (${oneLine(error)})`);
  // kept only for WebGPU: should it fail on a photo, the same model is rebuilt on the CPU
  const fallback = backend === "wasm" ? null : bytes;
  const inputs = session.inputNames, outputs = session.outputNames;
  const extra = inputs.filter((n) => n !== "L" && n !== "hints");
  if (!inputs.includes("L") || !outputs.includes("ab") || extra.length) {
    session.release();
    throw new Error(`not a colorizer model: its inputs are ${inputs.join(", ") || "none"} and outputs ` +
                    `${outputs.join(", ") || "none"}; a colorizer takes L (and optionally hints) and gives ab`);
  }
  return { session, backend, settings, note, hints: inputs.includes("hints"), fallback };
}

/** session.run; on WebGPU, a failure moves the model to WebAssembly (the CPU) and runs it there. */
async function runNetwork(ort, model, feeds) {
  try {
    return await model.session.run(feeds);
  } catch (e) {
    if (!model.fallback) throw e;
    console.warn(`WebGPU failed (${oneLine(e)}); running on WebAssembly instead`);
    model.session.release();
    model.session = await ort.InferenceSession.create(model.fallback, { executionProviders: ["wasm"] });
    model.backend = "wasm";
    model.fallback = null;
    describeModel();
    return await model.session.run(feeds);
  }
}

/** Colorize RGBA bytes of a W x H photo with a loaded model; returns RGBA bytes of the result
 *  (the input's alpha kept). Colorizer.colorize, step for step. */
export async function colorizePixels(ort, model, rgba, W, H) {
  const { multiple: m, render_size: renderSize, saturation } = model.settings;
  const L = luminance(rgba, W * H);

  // 1. the luminance at render size (longer side renderSize, never enlarged), area-averaged
  const [h, w] = renderShape(H, W, renderSize);
  const small = adaptivePool(adaptivePool(L, H, W, 1, w), 1, H, w, h);
  for (let i = 0; i < small.length; i++) small[i] = Math.min(1, Math.max(-1, small[i]));

  // 2. the network, on the luminance padded to its multiple; all-zero hints: the automatic result
  const hp = Math.ceil(h / m) * m, wp = Math.ceil(w / m) * m;
  const feeds = { L: new ort.Tensor("float32", padReplicate(small, h, w, hp, wp), [1, 1, hp, wp]) };
  if (model.hints) {
    feeds.hints = new ort.Tensor("float32", new Float32Array(HINT_CHANNELS * hp * wp), [1, HINT_CHANNELS, hp, wp]);
  }
  const out = (await runNetwork(ort, model, feeds)).ab;
  const dims = out.dims.join("x");
  if (dims !== `1x2x${hp}x${wp}`) throw new Error(`the model gave ab of shape ${dims}, not 1x2x${hp}x${wp}`);
  const padded = await out.getData();
  out.dispose();
  const ab = new Float32Array(2 * h * w);  // cropped to (2, h, w), times the saturation
  for (let c = 0; c < 2; c++) {
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < w; x++) ab[(c * h + y) * w + x] = padded[(c * hp + y) * wp + x] * saturation;
    }
  }

  // 3. ab upsampled to full size (bilinear: the width once, then each row as it is needed) and
  //    joined with the full-resolution L
  const rows = upsampleColumns(ab, 2, h, w, W);  // (2, h, W)
  const result = new Uint8ClampedArray(W * H * 4);  // rounds halves to even, as torch.round
  let opaque = true;
  for (let q = 3; q < rgba.length && opaque; q += 4) opaque = rgba[q] === 255;
  const M = RGB_FROM_XYZ;
  for (let y = 0; y < H; y++) {
    const [i0, i1, f] = taps(y, h, H);
    const a0 = i0 * W, a1 = i1 * W, b0 = (h + i0) * W, b1 = (h + i1) * W;
    for (let x = 0, p = y * W, q = p * 4; x < W; x++, p++, q += 4) {
      const a = Math.min(1, Math.max(-1, rows[a0 + x] * (1 - f) + rows[a1 + x] * f)) * AB_SCALE;
      const b = Math.min(1, Math.max(-1, rows[b0 + x] * (1 - f) + rows[b1 + x] * f)) * AB_SCALE;
      const fy = ((L[p] + 1) * 50 + 16) / 116;
      const X = finv(a / 500 + fy) * WHITE[0], Y = finv(fy) * WHITE[1], Z = finv(Math.max(fy - b / 200, 0)) * WHITE[2];
      for (let c = 0; c < 3; c++) {
        const v = linearToSrgb(M[3 * c] * X + M[3 * c + 1] * Y + M[3 * c + 2] * Z);
        result[q + c] = Math.min(1, Math.max(0, v)) * 255;
      }
      result[q + 3] = opaque ? 255 : rgba[q + 3];
    }
  }
  return result;
}

// -----------------------------------------------------------------------------
// The page

const $ = (id) => document.getElementById(id);
let ort = null;
let model = null;  // {session, backend, settings, note, hints, fallback, name}
let queue = Promise.resolve();  // files are done one at a time, in the order given

function oneLine(e) {
  const text = String(e?.message ?? e).split("\n")[0].trim();
  return text.length > 200 ? text.slice(0, 200) + "…" : text;
}

function say(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

const nextFrame = () => new Promise((resolve) => requestAnimationFrame(() => setTimeout(resolve, 0)));

function describeModel() {
  const s = model.settings;
  const n = ort.env.wasm.numThreads;
  const threads = model.backend === "wasm" ? `, ${n} thread${n === 1 ? "" : "s"}` : "";
  $("model").textContent = `model: ${model.name} (render size ${s.render_size}, saturation ${s.saturation}, ` +
    `multiple ${s.multiple}${model.hints ? ", takes hints" : ""}${model.note ? "; " + model.note : ""}); ` +
    `backend: ${model.backend}${threads}`;
  $("model").title = s.about;
}

async function useModel(name, bytesPromise) {
  say(`loading the model ${name}…`);
  try {
    const next = await loadModel(ort, new Uint8Array(await bytesPromise));
    model?.session.release();
    model = { ...next, name };
    describeModel();
    say(`ready: ${name} is loaded; drop photos here, or pick them`);
  } catch (e) {
    const kept = model ? `; still using ${model.name}` : "";
    say(`${name}: ${oneLine(e)}${kept}`, true);
  }
}

async function defaultModel() {
  const name = "weights/colorizer.onnx";
  let response;
  try {
    response = await fetch(DEFAULT_MODEL);
  } catch (e) {
    response = { ok: false, status: oneLine(e) };
  }
  if (!response.ok) {
    $("model").textContent = "no model loaded";
    say(`no model at ${name} (${response.status}): export it with "python colorize_base.py --export ` +
        `weights/colorizer.onnx", or pick one with "another model…"`, true);
    return;
  }
  await useModel(name, response.arrayBuffer());
}

function stem(name) {
  const dot = name.lastIndexOf(".");
  return dot > 0 ? name.slice(0, dot) : name;
}

async function colorizeFile(file) {
  const t0 = performance.now();
  if (!model) {
    say(`${file.name}: not colorized, no model is loaded (pick one with "another model…")`, true);
    return;
  }
  say(`colorizing ${file.name}…`);
  await nextFrame();  // let the message show: the work below holds the page
  let bitmap;
  try {
    bitmap = await createImageBitmap(file, { imageOrientation: "from-image", premultiplyAlpha: "none",
                                             colorSpaceConversion: "none" });  // pixel values as stored, like PIL
  } catch {
    say(`${file.name}: not an image this browser can read, so not colorized`, true);
    return;
  }
  const W = bitmap.width, H = bitmap.height;
  if (W * H > MAX_PIXELS) {
    bitmap.close();
    say(`${file.name}: ${W}x${H} is over this page's limit of ${MAX_PIXELS / 1e6} megapixels ` +
        `(colorize it with python colorize_base.py --infer)`, true);
    return;
  }
  const before = document.createElement("canvas");
  before.width = W;
  before.height = H;
  let rgba;
  try {
    const ctx = before.getContext("2d", { willReadFrequently: true });
    ctx.drawImage(bitmap, 0, 0);
    rgba = await colorizePixels(ort, model, ctx.getImageData(0, 0, W, H).data, W, H);
  } catch (e) {
    say(`${file.name}: could not be colorized: ${oneLine(e)}`, true);
    return;
  } finally {
    bitmap.close();
  }
  const after = document.createElement("canvas");
  after.width = W;
  after.height = H;
  after.getContext("2d").putImageData(new ImageData(rgba, W, H), 0, 0);
  const png = await new Promise((resolve) => after.toBlob(resolve, "image/png"));
  const seconds = (performance.now() - t0) / 1000;
  showResult(file.name, before, after, png, seconds);
  say(`${file.name}: ${W}x${H}, colorized in ${seconds.toFixed(2)} s`);
}

function showResult(name, before, after, png, seconds) {
  const figure = document.createElement("figure");
  figure.className = "photo";
  figure.dataset.seconds = seconds.toFixed(3);
  const pair = document.createElement("div");
  pair.className = "pair";
  for (const [canvas, label] of [[before, "before"], [after, "after"]]) {
    const cell = document.createElement("div");
    canvas.className = label;
    const caption = document.createElement("span");
    caption.textContent = label;
    cell.append(canvas, caption);
    pair.append(cell);
  }
  const caption = document.createElement("figcaption");
  caption.textContent = `${name}: ${before.width}x${before.height}, colorized in ${seconds.toFixed(2)} s ` +
    `(${model.backend}) `;
  const link = document.createElement("a");
  link.href = URL.createObjectURL(png);
  link.download = `${stem(name)}_colour.png`;
  link.textContent = `download ${link.download}`;
  caption.append(link);
  figure.append(pair, caption);
  $("results").prepend(figure);
}

function take(files) {
  for (const file of files) {
    const isModel = file.name.toLowerCase().endsWith(".onnx");
    queue = queue.then(() => (isModel ? useModel(file.name, file.arrayBuffer()) : colorizeFile(file)))
      .catch((e) => say(`${file.name}: ${oneLine(e)}`, true));  // the next file still runs
  }
}

async function start() {
  try {
    ort = await import(ORT_BUNDLE);
  } catch {
    $("model").textContent = "no model loaded";
    say(`onnxruntime-web is missing from web/vendor/: run "python web/fetch_ort.py" once (it needs the network), ` +
        `then reload this page`, true);
    return;
  }
  ort.env.wasm.wasmPaths = VENDOR;  // never a CDN
  // threads need cross-origin isolation (COOP/COEP headers), which python -m http.server does not send
  ort.env.wasm.numThreads = self.crossOriginIsolated ? Math.min(navigator.hardwareConcurrency || 1, 8) : 1;
  ort.env.logLevel = "error";

  $("photo-file").addEventListener("change", (e) => { take(e.target.files); e.target.value = ""; });
  $("model-file").addEventListener("change", (e) => { take(e.target.files); e.target.value = ""; });
  const drop = $("drop");
  for (const type of ["dragenter", "dragover"]) {
    document.addEventListener(type, (e) => { e.preventDefault(); drop.classList.add("over"); });
  }
  document.addEventListener("dragleave", (e) => { if (!e.relatedTarget) drop.classList.remove("over"); });
  document.addEventListener("drop", (e) => {  // anywhere on the page, so a miss never opens the file
    e.preventDefault();
    drop.classList.remove("over");
    take(e.dataTransfer.files);
  });
  queue = queue.then(defaultModel);
}

start();
