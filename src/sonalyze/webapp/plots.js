// Small SVG line plots (no library): decay curves per band, a metric per band across microphones,
// measured against predicted. Each plot has a title and a text summary for screen readers.
const NS = "http://www.w3.org/2000/svg";
export const COLOURS = ["#0b5cad", "#b3261e", "#1b7f3b", "#8a4b00", "#6b3fa0", "#00727a", "#5f6368", "#c2185b"];

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
  series.forEach((s, k) => {
    let d = "", pen = false;
    s.x.forEach((x, i) => {
      const y = s.y[i];
      if (y === null || !Number.isFinite(y)) { pen = false; return; }
      d += `${pen ? "L" : "M"}${px(x).toFixed(1)},${py(Math.max(y0, Math.min(y1, y))).toFixed(1)}`;
      pen = true;
    });
    const colour = COLOURS[k % COLOURS.length];
    svg.append(el("path", { d, fill: "none", stroke: colour, "stroke-width": 2, ...(s.dashed ? { "stroke-dasharray": "5 4" } : {}) }));
    if (xCategories) s.x.forEach((x, i) => { if (s.y[i] !== null) svg.append(el("circle", { cx: px(x), cy: py(s.y[i]), r: 3, fill: colour })); });
  });
  figure.append(svg);
  const legend = document.createElement("figcaption");
  series.forEach((s, k) => {
    const item = document.createElement("span");
    item.className = "legend-item";
    const swatch = document.createElement("span");
    swatch.className = `swatch swatch-${k % COLOURS.length}${s.dashed ? " dashed" : ""}`;
    swatch.setAttribute("aria-hidden", "true");
    item.append(swatch, document.createTextNode(s.label));
    legend.append(item);
  });
  figure.append(legend);
  return figure;
}
