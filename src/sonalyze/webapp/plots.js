// Small SVG line plots (no library): decay curves per band, a metric per band across microphones,
// measured against predicted. Each plot has a title and a text summary for screen readers.
const NS = "http://www.w3.org/2000/svg";
export const COLOURS = ["#0b5cad", "#b3261e", "#1b7f3b", "#8a4b00", "#6b3fa0", "#00727a", "#5f6368", "#c2185b"];

/** Marker shapes, one per series in turn, every other one hollow: series with equal values stay told
 *  apart by shape, not by colour alone (WCAG 1.4.1, use of colour). */
export const MARKERS = ["circle", "square", "triangle", "diamond"];

/** The SVG path of a `shape` marker centred on (cx, cy), `r` px from its centre to its sides. */
export function markerPath(shape, cx, cy, r) {
  const f = (v) => +v.toFixed(1);
  const poly = (points) => `M${points.map(([x, y]) => `${f(cx + x)},${f(cy + y)}`).join("L")}Z`;
  if (shape === "square") return poly([[-r, -r], [r, -r], [r, r], [-r, r]]);
  if (shape === "triangle") return poly([[0, -1.2 * r], [1.15 * r, 0.8 * r], [-1.15 * r, 0.8 * r]]);
  if (shape === "diamond") return poly([[0, -1.3 * r], [1.3 * r, 0], [0, 1.3 * r], [-1.3 * r, 0]]);
  return `M${f(cx - r)},${f(cy)}a${r},${r} 0 1,0 ${2 * r},0a${r},${r} 0 1,0 ${-2 * r},0Z`;
}

/** Horizontal offsets (px) of `count` series in a plot over categories `slotPx` wide, centred on the
 *  category: series with identical values are drawn side by side instead of one hiding the other. */
export function categoryOffsets(count, slotPx) {
  const step = count > 1 ? Math.min(6, (0.4 * slotPx) / (count - 1)) : 0;
  return Array.from({ length: count }, (_, k) => (k - (count - 1) / 2) * step);
}

function marker(k, cx, cy, colour) {
  const hollow = k % 2 === 1;
  return el("path", { d: markerPath(MARKERS[k % MARKERS.length], cx, cy, 3.5), fill: hollow ? "#fff" : colour, stroke: colour, "stroke-width": hollow ? 1.8 : 1 });
}

function el(name, attrs = {}, text) {
  const node = document.createElementNS(NS, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}

function niceTicks(lo, hi, count = 5) {
  if (!(hi > lo)) { hi = lo + 1; }
  const step0 = (hi - lo) / count, mag = 10 ** Math.floor(Math.log10(step0));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= step0);
  const ticks = [];
  for (let t = Math.ceil(lo / step) * step; t <= hi + 1e-9; t += step) ticks.push(Math.round(t / step) * step);
  return ticks;
}

/**
 * series: [{label, x: [], y: [] (null = gap), dashed?}]; options: {title, xLabel, yLabel, xCategories?}.
 * With xCategories the x values are indexes into them (octave bands).
 */
export function linePlot(series, { title, xLabel, yLabel, xCategories = null, yRange = null }) {
  const W = 360, H = 230, L = 52, R = 10, T = 28, B = 44;
  const figure = document.createElement("figure");
  figure.className = "plot";
  const svg = el("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": title });
  const xs = series.flatMap((s) => s.x), ys = series.flatMap((s) => s.y).filter((v) => v !== null && Number.isFinite(v));
  const xLo = xCategories ? -0.5 : Math.min(...xs), xHi = xCategories ? xCategories.length - 0.5 : Math.max(...xs);
  const yLo = yRange ? yRange[0] : Math.min(...ys), yHi = yRange ? yRange[1] : Math.max(...ys);
  const pad = (yHi - yLo) * 0.08 || 1;
  const y0 = yRange ? yLo : yLo - pad, y1 = yRange ? yHi : yHi + pad;
  const px = (x) => L + ((x - xLo) / (xHi - xLo || 1)) * (W - L - R);
  const py = (y) => T + (1 - (y - y0) / (y1 - y0 || 1)) * (H - T - B);
  svg.append(el("text", { x: 4, y: 17, class: "plot-title" }, title));
  for (const t of niceTicks(y0, y1)) {
    svg.append(el("line", { x1: L, x2: W - R, y1: py(t), y2: py(t), class: "grid" }));
    svg.append(el("text", { x: L - 4, y: py(t) + 4, class: "tick", "text-anchor": "end" }, String(+t.toFixed(3))));
  }
  const xTicks = xCategories ? xCategories.map((_, i) => i) : niceTicks(xLo, xHi);
  for (const t of xTicks) {
    svg.append(el("text", { x: px(t), y: H - B + 16, class: "tick", "text-anchor": "middle" }, xCategories ? xCategories[t] : String(+t.toFixed(3))));
  }
  svg.append(el("text", { x: (L + W - R) / 2, y: H - 6, class: "axis", "text-anchor": "middle" }, xLabel));
  svg.append(el("text", { x: 12, y: (T + H - B) / 2, class: "axis", "text-anchor": "middle", transform: `rotate(-90 12 ${(T + H - B) / 2})` }, yLabel));
  const offsets = xCategories ? categoryOffsets(series.length, (W - L - R) / xCategories.length) : series.map(() => 0);
  series.forEach((s, k) => {
    let d = "", pen = false;
    const points = [];
    s.x.forEach((x, i) => {
      const y = s.y[i];
      if (y === null || !Number.isFinite(y)) { pen = false; return; }
      points.push([px(x) + offsets[k], py(Math.max(y0, Math.min(y1, y)))]);
      d += `${pen ? "L" : "M"}${points.at(-1).map((v) => v.toFixed(1)).join(",")}`;
      pen = true;
    });
    const colour = COLOURS[k % COLOURS.length];
    svg.append(el("path", { d, fill: "none", stroke: colour, "stroke-width": 2, ...(s.dashed ? { "stroke-dasharray": "5 4" } : {}) }));
    if (xCategories) for (const [cx, cy] of points) svg.append(marker(k, cx, cy, colour));
  });
  figure.append(svg);
  const legend = document.createElement("figcaption");
  series.forEach((s, k) => {
    const item = document.createElement("span");
    item.className = "legend-item";
    const colour = COLOURS[k % COLOURS.length];
    const swatch = el("svg", { class: "swatch", viewBox: "0 0 28 12", width: 28, height: 12, "aria-hidden": "true" });
    swatch.append(el("line", { x1: 0, y1: 6, x2: 28, y2: 6, stroke: colour, "stroke-width": 2, ...(s.dashed ? { "stroke-dasharray": "5 4" } : {}) }));
    if (xCategories) swatch.append(marker(k, 14, 6, colour));
    item.append(swatch, document.createTextNode(s.label));
    legend.append(item);
  });
  figure.append(legend);
  return figure;
}
