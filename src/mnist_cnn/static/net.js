// The run's network and MNIST's preprocessing in plain JavaScript over typed arrays, for the
// page exported by `mnist-cnn export RUN --web DIR` (no server, works from file://).
// The weights come from static/model.js, a script that sets window.MNIST_CNN_MODEL (see
// export_web.py for its layout). Everything here is a port of the Python: model.py's two
// networks in eval mode, preprocess.py's _mnist_like and Pillow's BOX resampling.
"use strict";

(function (root) {
  const SIDE = 28; // MNIST's images are 28×28
  const FIT_SIZE = 20; // ... with the digit fitted into 20×20 (preprocess.py's constants)
  const INK_THRESHOLD = 0.2;
  const NOISE_SIGMAS = 5.0;
  const NOISE_FLOOR_SIGMAS = 2.0;
  const STRONG_PERCENTILE = 95;
  const MIN_CONTRAST = 0.1;
  const CENTRE = 14.0;
  const f32 = Math.fround;

  // ---------------------------------------------------------------- weights

  function decodeBase64(text) {
    const raw = atob(text);
    const out = new Uint8Array(raw.length);
    for (let i = 0; i < raw.length; i++) out[i] = raw.charCodeAt(i);
    return out;
  }

  // IEEE half -> float, for every one of the 65,536 bit patterns.
  let HALF = null;
  function halfTable() {
    if (HALF) return HALF;
    HALF = new Float32Array(65536);
    for (let h = 0; h < 65536; h++) {
      const sign = h & 0x8000 ? -1 : 1;
      const exp = (h >> 10) & 0x1f;
      const frac = h & 0x3ff;
      let v;
      if (exp === 0) v = frac * 2 ** -24; // subnormal
      else if (exp === 31) v = frac ? NaN : Infinity;
      else v = (1 + frac / 1024) * 2 ** (exp - 15);
      HALF[h] = sign * v;
    }
    return HALF;
  }

  // model: {arch, config, dtype: "float16" | "float32", tensors: {name: {shape, offset}}, data}
  // offset counts elements of dtype from the start of data (little-endian bytes, base64).
  function load(model) {
    const bytes = decodeBase64(model.data);
    const tensors = {};
    for (const [name, spec] of Object.entries(model.tensors)) {
      const n = spec.shape.reduce((a, b) => a * b, 1);
      const out = new Float32Array(n);
      if (spec.dtype === "float16") {
        const table = halfTable();
        const view = new DataView(bytes.buffer, spec.byte_offset, 2 * n);
        for (let i = 0; i < n; i++) out[i] = table[view.getUint16(2 * i, true)];
      } else {
        const view = new DataView(bytes.buffer, spec.byte_offset, 4 * n);
        for (let i = 0; i < n; i++) out[i] = view.getFloat32(4 * i, true);
      }
      tensors[name] = { shape: spec.shape, data: out };
    }
    const need = (name) => {
      if (!tensors[name]) throw new Error(`model.js lacks the tensor ${name}`);
      return tensors[name];
    };
    const arch = model.arch;
    if (arch !== "deep-mnist" && arch !== "fast-cnn") throw new Error(`unknown network ${arch}`);
    return { arch, config: model.config, need, tensors };
  }

  // ---------------------------------------------------------------- layers (C, H, W) layout

  // SAME convolution at stride 1; weight (O, I, K, K); bias may be null. As a matrix product:
  // each output pixel is one dot product of the weights (I·K·K) with its padded input patch,
  // gathered once per layer into a (H·W, I·K·K) matrix, so the inner loop is long and tight.
  function conv2d(x, inC, h, w, weight, bias, outC, k) {
    const pad = k >> 1;
    const patch = inC * k * k;
    const cols = new Float32Array(h * w * patch); // zero where the patch overhangs the image
    for (let y = 0; y < h; y++) {
      for (let xx = 0; xx < w; xx++) {
        let p = (y * w + xx) * patch;
        for (let i = 0; i < inC; i++) {
          for (let ky = 0; ky < k; ky++) {
            const sy = y + ky - pad;
            if (sy < 0 || sy >= h) {
              p += k;
              continue;
            }
            const row = i * h * w + sy * w;
            for (let kx = 0; kx < k; kx++, p++) {
              const sx = xx + kx - pad;
              if (sx >= 0 && sx < w) cols[p] = x[row + sx];
            }
          }
        }
      }
    }
    const out = new Float32Array(outC * h * w);
    matmul(weight.data, outC, cols, h * w, patch, out);
    if (bias) {
      for (let o = 0; o < outC; o++) {
        for (let q = o * h * w; q < (o + 1) * h * w; q++) out[q] += bias.data[o];
      }
    }
    return out;
  }

  // out[o·m + q] = Σ_j a[o·n + j] · b[q·n + j], for o < rows, q < m: rows of A times rows of B.
  // Four rows of A at a time: four independent sums per loaded value of B (JavaScript has no
  // SIMD; independent sums keep the floating-point adder busy instead of waiting on one chain).
  function matmul(a, rows, b, m, n, out) {
    let o = 0;
    for (; o + 4 <= rows; o += 4) {
      const a0 = o * n, a1 = a0 + n, a2 = a1 + n, a3 = a2 + n;
      for (let q = 0; q < m; q++) {
        const c = q * n;
        let s0 = 0, s1 = 0, s2 = 0, s3 = 0;
        for (let j = 0; j < n; j++) {
          const v = b[c + j];
          s0 += a[a0 + j] * v;
          s1 += a[a1 + j] * v;
          s2 += a[a2 + j] * v;
          s3 += a[a3 + j] * v;
        }
        out[o * m + q] = s0;
        out[(o + 1) * m + q] = s1;
        out[(o + 2) * m + q] = s2;
        out[(o + 3) * m + q] = s3;
      }
    }
    for (; o < rows; o++) {
      for (let q = 0; q < m; q++) {
        let s = 0;
        for (let j = 0; j < n; j++) s += a[o * n + j] * b[q * n + j];
        out[o * m + q] = s;
      }
    }
  }

  function maxPool2(x, c, h, w) {
    const oh = h >> 1;
    const ow = w >> 1;
    const out = new Float32Array(c * oh * ow);
    for (let ch = 0; ch < c; ch++) {
      for (let y = 0; y < oh; y++) {
        for (let xx = 0; xx < ow; xx++) {
          const i = ch * h * w + 2 * y * w + 2 * xx;
          out[ch * oh * ow + y * ow + xx] = Math.max(x[i], x[i + 1], x[i + w], x[i + w + 1]);
        }
      }
    }
    return out;
  }

  function relu(x) {
    for (let i = 0; i < x.length; i++) if (x[i] < 0) x[i] = 0;
    return x;
  }

  // Batch norm in eval mode, folded by the exporter into a per-channel scale and shift.
  function affine(x, channels, scale, shift) {
    const per = x.length / channels;
    for (let c = 0; c < channels; c++) {
      const s = scale.data[c];
      const t = shift.data[c];
      for (let i = c * per; i < (c + 1) * per; i++) x[i] = x[i] * s + t;
    }
    return x;
  }

  function linear(x, weight, bias) {
    const [outN, inN] = weight.shape;
    const out = new Float32Array(outN);
    matmul(weight.data, outN, x, 1, inN, out);
    if (bias) for (let o = 0; o < outN; o++) out[o] += bias.data[o];
    return out;
  }

  // One image, float (784) in [0, 1] -> {logits, conv1, conv2} as model.py's forward computes
  // them in eval mode (dropout off); conv1/conv2 are the maps the page shows.
  function forward(net, x) {
    const c = net.config;
    const k = c.kernel_size;
    const w1 = net.need("conv1.weight");
    const w2 = net.need("conv2.weight");
    if (net.arch === "deep-mnist") {
      const conv1 = relu(conv2d(x, 1, SIDE, SIDE, w1, net.need("conv1.bias"), c.conv1_channels, k));
      const pool1 = maxPool2(conv1, c.conv1_channels, SIDE, SIDE);
      const h2 = SIDE / 2;
      const conv2 = relu(
        conv2d(pool1, c.conv1_channels, h2, h2, w2, net.need("conv2.bias"), c.conv2_channels, k)
      );
      const pool2 = maxPool2(conv2, c.conv2_channels, h2, h2);
      const fc1 = relu(linear(pool2, net.need("fc1.weight"), net.need("fc1.bias")));
      const logits = linear(fc1, net.need("fc2.weight"), net.need("fc2.bias"));
      return { logits, conv1, conv2 };
    }
    // fast-cnn: conv -> pool -> BN -> ReLU, twice; [conv -> BN -> ReLU]; fc -> BN -> ReLU; fc.
    // Its conv1/conv2 maps are shown, as model.py reports them, through the same batch norm
    // and ReLU (at the end).
    const conv1 = conv2d(x, 1, SIDE, SIDE, w1, null, c.conv1_channels, k);
    const pool1 = relu(
      affine(maxPool2(conv1, c.conv1_channels, SIDE, SIDE), c.conv1_channels,
        net.need("bn1.scale"), net.need("bn1.shift"))
    );
    const h2 = SIDE / 2;
    const conv2 = conv2d(pool1, c.conv1_channels, h2, h2, w2, null, c.conv2_channels, k);
    const pool2 = relu(
      affine(maxPool2(conv2, c.conv2_channels, h2, h2), c.conv2_channels,
        net.need("bn2.scale"), net.need("bn2.shift"))
    );
    // A third stage (conv3_channels > 0): conv at 7×7 -> BN -> ReLU, read by fc1.
    const c3 = c.conv3_channels || 0;
    const h3 = h2 / 2;
    const last = c3
      ? relu(
          affine(conv2d(pool2, c.conv2_channels, h3, h3, net.need("conv3.weight"), null, c3, k), c3,
            net.need("bn_conv3.scale"), net.need("bn_conv3.shift"))
        )
      : pool2;
    const fc1 = relu(
      affine(linear(last, net.need("fc1.weight"), null), c.hidden,
        net.need("bn3.scale"), net.need("bn3.shift"))
    );
    const logits = linear(fc1, net.need("fc2.weight"), net.need("fc2.bias"));
    relu(affine(conv1, c.conv1_channels, net.need("bn1.scale"), net.need("bn1.shift")));
    relu(affine(conv2, c.conv2_channels, net.need("bn2.scale"), net.need("bn2.shift")));
    return { logits, conv1, conv2 };
  }

  // The test entry point: N images as uint8 (N × 784, white ink on black) -> logits (N × 10).
  function logitsBatch(net, images) {
    const n = images.length / (SIDE * SIDE);
    const out = new Float32Array(n * net.config.num_classes);
    const x = new Float32Array(SIDE * SIDE);
    for (let i = 0; i < n; i++) {
      for (let p = 0; p < SIDE * SIDE; p++) x[p] = images[i * SIDE * SIDE + p] / 255;
      out.set(forward(net, x).logits, i * net.config.num_classes);
    }
    return out;
  }

  function softmax(logits) {
    const m = Math.max(...logits);
    const e = Array.from(logits, (v) => Math.exp(v - m));
    const s = e.reduce((a, b) => a + b, 0);
    return e.map((v) => v / s);
  }

  // ---------------------------------------------------------------- preprocessing

  // Python's round(): half to even.
  function roundHalfEven(v) {
    const r = Math.round(v);
    return Math.abs(v % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
  }

  function median(values) {
    const s = Float64Array.from(values).sort();
    const n = s.length;
    return n % 2 ? s[(n - 1) / 2] : (s[n / 2 - 1] + s[n / 2]) / 2;
  }

  // The k-th smallest of a (copied) array: quickselect, linear time where a sort is n·log n.
  function kth(a, k) {
    let lo = 0;
    let hi = a.length - 1;
    while (hi > lo) {
      const pivot = a[(lo + hi) >> 1];
      let i = lo;
      let j = hi;
      while (i <= j) {
        while (a[i] < pivot) i++;
        while (a[j] > pivot) j--;
        if (i <= j) {
          const t = a[i];
          a[i] = a[j];
          a[j] = t;
          i++;
          j--;
        }
      }
      if (k <= j) hi = j;
      else if (k >= i) lo = i;
      else break;
    }
    return a[k];
  }

  // numpy's percentile (linear interpolation between the closest ranks).
  function percentile(values, q) {
    const s = Float64Array.from(values);
    const pos = (q / 100) * (s.length - 1);
    const lo = Math.floor(pos);
    const a = kth(s, lo);
    let b = a;
    if (lo + 1 < s.length) {
      b = Infinity; // after the selection, everything right of lo is >= a: take its minimum
      for (let i = lo + 1; i < s.length; i++) if (s[i] < b) b = s[i];
    }
    const t = pos - lo;
    return t >= 0.5 ? b - (b - a) * (1 - t) : a + (b - a) * t;
  }

  // 1.4826 × the median absolute deviation of float32 values (numpy keeps float32 throughout).
  function mad(values) {
    const m = f32(median(values));
    return 1.4826 * f32(median(values.map((v) => Math.abs(f32(v - m)))));
  }

  // Least squares for y ≈ c0·u + c1·v + c2 over the rows where keep is set, by the normal
  // equations (well conditioned: the columns are row/h, column/w and 1). Null if singular.
  function fitPlane(us, vs, ys, keep) {
    const a = [[0, 0, 0], [0, 0, 0], [0, 0, 0]];
    const b = [0, 0, 0];
    for (let r = 0; r < ys.length; r++) {
      if (!keep[r]) continue;
      const d = [us[r], vs[r], 1];
      for (let i = 0; i < 3; i++) {
        b[i] += d[i] * ys[r];
        for (let j = 0; j < 3; j++) a[i][j] += d[i] * d[j];
      }
    }
    // Gaussian elimination with partial pivoting.
    for (let col = 0; col < 3; col++) {
      let p = col;
      for (let r = col + 1; r < 3; r++) if (Math.abs(a[r][col]) > Math.abs(a[p][col])) p = r;
      [a[col], a[p]] = [a[p], a[col]];
      [b[col], b[p]] = [b[p], b[col]];
      if (a[col][col] === 0) return null;
      for (let r = col + 1; r < 3; r++) {
        const f = a[r][col] / a[col][col];
        for (let j = col; j < 3; j++) a[r][j] -= f * a[col][j];
        b[r] -= f * b[col];
      }
    }
    const x = [0, 0, 0];
    for (let i = 2; i >= 0; i--) {
      let s = b[i];
      for (let j = i + 1; j < 3; j++) s -= a[i][j] * x[j];
      x[i] = s / a[i][i];
    }
    return x;
  }

  // preprocess.py's _paper_level: a plane fitted to the frame, refitted without ink-like pixels.
  function paperLevel(gray, h, w, frameIdx) {
    const n = frameIdx.length;
    const values = new Float64Array(n);
    const us = new Float64Array(n);
    const vs = new Float64Array(n);
    for (let r = 0; r < n; r++) {
      const i = frameIdx[r];
      values[r] = gray[i];
      us[r] = Math.floor(i / w) / h;
      vs[r] = (i % w) / w;
    }
    let keep = new Uint8Array(n).fill(1);
    let coef = [0, 0, median(values)];
    if (Math.min(h, w) >= 8) {
      const resid = new Float64Array(n);
      for (let it = 0; it < 3; it++) {
        coef = fitPlane(us, vs, values, keep) || [0, 0, median(values)];
        const kept = [];
        for (let r = 0; r < n; r++) {
          resid[r] = values[r] - (us[r] * coef[0] + vs[r] * coef[1] + coef[2]);
          if (keep[r]) kept.push(Math.abs(resid[r]));
        }
        const spread = 1.4826 * median(kept) + 1e-3;
        keep = new Uint8Array(n);
        let count = 0;
        for (let r = 0; r < n; r++) {
          keep[r] = Math.abs(resid[r]) < 3 * spread ? 1 : 0;
          count += keep[r];
        }
        if (count < 0.5 * n) {
          coef = [0, 0, median(values)];
          break;
        }
      }
    }
    const out = new Float32Array(h * w);
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < w; x++) out[y * w + x] = (coef[0] * y) / h + (coef[1] * x) / w + coef[2];
    }
    return out;
  }

  // Mean over a (2r+1)² window, edges repeated; float32 after each axis (as _box_blur).
  function boxBlur(a, h, w, r) {
    const n = 2 * r + 1;
    const tmp = new Float32Array(h * w);
    for (let x = 0; x < w; x++) {
      for (let y = 0; y < h; y++) {
        let s = 0;
        for (let d = -r; d <= r; d++) s += a[Math.min(Math.max(y + d, 0), h - 1) * w + x];
        tmp[y * w + x] = s / n;
      }
    }
    const out = new Float32Array(h * w);
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < w; x++) {
        let s = 0;
        for (let d = -r; d <= r; d++) s += tmp[y * w + Math.min(Math.max(x + d, 0), w - 1)];
        out[y * w + x] = s / n;
      }
    }
    return out;
  }

  // Pillow's resampling coefficients for the BOX filter (Resample.c, precompute_coeffs).
  function boxCoeffs(inSize, outSize) {
    const scale = inSize / outSize;
    const filterscale = Math.max(scale, 1);
    const support = 0.5 * filterscale;
    const taps = [];
    for (let xx = 0; xx < outSize; xx++) {
      const center = (xx + 0.5) * scale;
      const ss = 1 / filterscale;
      const xmin = Math.max(Math.trunc(center - support + 0.5), 0);
      const xmax = Math.min(Math.trunc(center + support + 0.5), inSize) - xmin;
      const k = [];
      let ww = 0;
      for (let x = 0; x < xmax; x++) {
        const t = (x + xmin - center + 0.5) * ss;
        const v = t > -0.5 && t <= 0.5 ? 1 : 0;
        k.push(v);
        ww += v;
      }
      taps.push({ xmin, k: ww ? k.map((v) => v / ww) : k });
    }
    return taps;
  }

  // Pillow's resize of a float ("F") image with BOX: horizontal pass, then vertical, float32 between.
  function resizeBox(a, h, w, newH, newW) {
    let cur = a;
    let curW = w;
    if (newW !== w) {
      const taps = boxCoeffs(w, newW);
      const out = new Float32Array(h * newW);
      for (let y = 0; y < h; y++) {
        for (let xx = 0; xx < newW; xx++) {
          const { xmin, k } = taps[xx];
          let s = 0;
          for (let x = 0; x < k.length; x++) s += cur[y * curW + xmin + x] * k[x];
          out[y * newW + xx] = s;
        }
      }
      cur = out;
      curW = newW;
    }
    if (newH !== h) {
      const taps = boxCoeffs(h, newH);
      const out = new Float32Array(newH * curW);
      for (let yy = 0; yy < newH; yy++) {
        const { xmin, k } = taps[yy];
        for (let x = 0; x < curW; x++) {
          let s = 0;
          for (let y = 0; y < k.length; y++) s += cur[(xmin + y) * curW + x] * k[y];
          out[yy * curW + x] = s;
        }
      }
      cur = out;
    }
    return cur;
  }

  class NoDigit extends Error {}

  // preprocess.py's _mnist_like: gray (h × w floats in [0, 1]) -> 28×28 uint8, white on black,
  // the digit fitted into 20×20 and centred by its centre of mass. Throws NoDigit on a blank.
  function preprocess(gray, h, w, invert = null) {
    const bw = Math.max(1, Math.floor(Math.min(h, w) / 50));
    const frameIdx = [];
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < w; x++) {
        if (y < bw || y >= h - bw || x < bw || x >= w - bw) frameIdx.push(y * w + x);
      }
    }
    let g = Float32Array.from(gray);
    if (invert === null) invert = median(frameIdx.map((i) => g[i])) > 0.5;
    if (invert) g = g.map((v) => 1 - v);

    const paper = paperLevel(g, h, w, frameIdx);
    const ink = new Float32Array(h * w);
    for (let i = 0; i < ink.length; i++) ink[i] = g[i] - paper[i];
    const noise = mad(frameIdx.map((i) => ink[i]));
    const radius = Math.max(1, Math.floor(Math.min(h, w) / 100));
    const smooth = boxBlur(ink, h, w, radius);
    const sNoise = mad(frameIdx.map((i) => smooth[i]));
    const peak = smooth.length > 1000 ? f32(percentile(smooth, 99.9)) : Math.max(...smooth);
    if (peak < Math.max(MIN_CONTRAST, NOISE_SIGMAS * sNoise)) {
      throw new NoDigit("no digit found: the image is blank (or has almost no contrast)");
    }
    const cut = f32(Math.max(INK_THRESHOLD * peak, NOISE_SIGMAS * sNoise)); // numpy: as float32
    let r0 = h, r1 = -1, c0 = w, c1 = -1;
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < w; x++) {
        if (smooth[y * w + x] > cut) {
          r0 = Math.min(r0, y);
          r1 = Math.max(r1, y);
          c0 = Math.min(c0, x);
          c1 = Math.max(c1, x);
        }
      }
    }
    const top = Math.max(r0 - radius, 0);
    const bottom = Math.min(r1 + radius + 1, h);
    const left = Math.max(c0 - radius, 0);
    const right = Math.min(c1 + radius + 1, w);

    // Ink from 0 (paper) to 1 (the strong strokes), in float32 as numpy computes it.
    const floor = f32(NOISE_FLOOR_SIGMAS * noise);
    const ch = bottom - top;
    const cw = right - left;
    const crop = new Float32Array(ch * cw);
    const inked = [];
    for (let y = 0; y < ch; y++) {
      for (let x = 0; x < cw; x++) {
        const v = ink[(top + y) * w + left + x];
        crop[y * cw + x] = v;
        if (smooth[(top + y) * w + left + x] > cut) inked.push(v);
      }
    }
    const strong = f32(percentile(inked, STRONG_PERCENTILE)) - NOISE_FLOOR_SIGMAS * noise;
    const div = f32(Math.max(strong, 1e-3));
    for (let i = 0; i < crop.length; i++) {
      crop[i] = Math.min(Math.max(f32(f32(crop[i] - floor) / div), 0), 1);
    }

    const scale = FIT_SIZE / Math.max(ch, cw);
    const newW = Math.max(1, roundHalfEven(cw * scale));
    const newH = Math.max(1, roundHalfEven(ch * scale));
    const small = resizeBox(crop, ch, cw, newH, newW);
    const box = new Float32Array(newH * newW);
    let total = 0;
    for (let i = 0; i < box.length; i++) {
      box[i] = f32(Math.min(Math.max(small[i], 0), 1) * 255);
      total += box[i];
    }
    if (total <= 0) throw new NoDigit("no digit found: the ink vanishes when scaled down to 20×20");
    let cy = 0;
    let cx = 0;
    for (let y = 0; y < newH; y++) {
      for (let x = 0; x < newW; x++) {
        cy += box[y * newW + x] * y;
        cx += box[y * newW + x] * x;
      }
    }
    cy /= total;
    cx /= total;
    const oy = Math.min(Math.max(roundHalfEven(CENTRE - cy), 0), SIDE - newH);
    const ox = Math.min(Math.max(roundHalfEven(CENTRE - cx), 0), SIDE - newW);
    const out = new Uint8Array(SIDE * SIDE);
    for (let y = 0; y < newH; y++) {
      for (let x = 0; x < newW; x++) {
        out[(oy + y) * SIDE + ox + x] = Math.min(Math.max(roundHalfEven(box[y * newW + x]), 0), 255);
      }
    }
    return out;
  }

  // RGBA pixels (a canvas's ImageData) -> gray in [0, 1], as Pillow's convert("L") then / 255.
  function grayFromRGBA(rgba, h, w) {
    const out = new Float32Array(h * w);
    for (let i = 0; i < h * w; i++) {
      const r = rgba[4 * i], g = rgba[4 * i + 1], b = rgba[4 * i + 2], a = rgba[4 * i + 3];
      // Transparent areas are paper (white), as preprocess.py composites them.
      const over = (v) => Math.round((v * a + 255 * (255 - a)) / 255);
      const lum = (over(r) * 19595 + over(g) * 38470 + over(b) * 7471 + 0x8000) >> 16;
      out[i] = f32(lum / 255);
    }
    return out;
  }

  root.MnistNet = {
    SIDE, load, forward, logitsBatch, softmax, preprocess, grayFromRGBA, NoDigit, decodeBase64,
  };
})(typeof window !== "undefined" ? window : globalThis);
