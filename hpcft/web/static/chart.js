// hpcft console: a small SVG line chart (hover values, drag to zoom, double-click to reset).
// Copyright the hpcft authors. Licensed under the Apache License, Version 2.0.
"use strict";
(function () {
  const NS = "http://www.w3.org/2000/svg";
  const COLORS = ["#1f6feb", "#d9480f", "#2f9e44", "#ae3ec9", "#f08c00", "#0c8599", "#e03131", "#5c7cfa"];

  function el(tag, attrs, parent) {
    const e = document.createElementNS(NS, tag);
    for (const k in attrs) e.setAttribute(k, attrs[k]);
    if (parent) parent.appendChild(e);
    return e;
  }
  function fmt(v) {
    if (v === null || v === undefined || !isFinite(v)) return "-";
    const a = Math.abs(v);
    return a !== 0 && (a >= 1e5 || a < 1e-3) ? v.toExponential(2) : String(+v.toPrecision(4));
  }
  function nearest(xs, x) {  // index of the point of sorted xs closest to x
    let lo = 0, hi = xs.length - 1;
    while (hi - lo > 1) { const m = (lo + hi) >> 1; if (xs[m] < x) lo = m; else hi = m; }
    return Math.abs(xs[lo] - x) <= Math.abs(xs[hi] - x) ? lo : hi;
  }
  function ticks(lo, hi) {  // round values ("nice numbers") inside [lo, hi]
    const raw = (hi - lo) / 4, mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw) || raw;
    const out = [];
    for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(+v.toPrecision(12));
    return out;
  }
  function extent(series, x0, x1) {
    let xmin = Infinity, xmax = -Infinity, ymin = Infinity, ymax = -Infinity;
    for (const [xs, ys] of series) {
      for (let i = 0; i < xs.length; i++) {
        xmin = Math.min(xmin, xs[i]); xmax = Math.max(xmax, xs[i]);
        if ((x0 === null || xs[i] >= x0) && (x1 === null || xs[i] <= x1)) { ymin = Math.min(ymin, ys[i]); ymax = Math.max(ymax, ys[i]); }
      }
    }
    if (x0 !== null) { xmin = x0; xmax = x1; }
    if (!isFinite(ymin)) { ymin = 0; ymax = 1; }
    if (ymin === ymax) { ymin -= 0.5; ymax += 0.5; }
    if (xmin === xmax) { xmin -= 0.5; xmax += 0.5; }
    const pad = (ymax - ymin) * 0.05;
    return [xmin, xmax, ymin - pad, ymax + pad];
  }

  // panel: {label, unit, series: {name: [xs, ys]}}; xlabel: the x axis' name
  function draw(box, panel, xlabel) {
    box.textContent = "";
    box.classList.add("chart");
    const title = document.createElement("h3");
    title.textContent = panel.label + (panel.unit && panel.unit !== panel.label ? " (" + panel.unit + ")" : "");
    box.appendChild(title);
    const names = Object.keys(panel.series);
    const data = names.map((n) => panel.series[n]);
    const W = Math.max(300, (box.clientWidth || 600) - 14), H = 220, L = 58, R = 12, T = 8, B = 30;
    const svg = el("svg", { width: W, height: H, viewBox: "0 0 " + W + " " + H, role: "img" }, box);
    svg.setAttribute("aria-label", title.textContent);
    const tip = document.createElement("div"); tip.className = "tip"; tip.hidden = true; box.appendChild(tip);
    const legend = document.createElement("div"); legend.className = "legend"; box.appendChild(legend);
    names.forEach((n, i) => {
      const s = document.createElement("span"); const sw = document.createElement("i");
      sw.style.background = COLORS[i % COLORS.length]; s.appendChild(sw); s.appendChild(document.createTextNode(n));
      legend.appendChild(s);
    });
    let zoom = box._zoom || [null, null];
    let sx, sy, ext;

    function render() {
      while (svg.firstChild) svg.removeChild(svg.firstChild);
      ext = extent(data, zoom[0], zoom[1]);
      const [x0, x1, y0, y1] = ext;
      sx = (x) => L + ((x - x0) / (x1 - x0)) * (W - L - R);
      sy = (y) => T + (1 - (y - y0) / (y1 - y0)) * (H - T - B);
      for (const yv of ticks(y0, y1)) {
        el("line", { x1: L, x2: W - R, y1: sy(yv), y2: sy(yv), stroke: "#e6eaee" }, svg);
        el("text", { x: L - 4, y: sy(yv) + 4, "text-anchor": "end", "font-size": 11, fill: "#5d6b7a" }, svg).textContent = fmt(yv);
      }
      for (const xv of ticks(x0, x1)) {
        el("text", { x: sx(xv), y: H - 14, "text-anchor": "middle", "font-size": 11, fill: "#5d6b7a" }, svg).textContent = fmt(xv);
      }
      el("text", { x: W - R, y: H - 2, "text-anchor": "end", "font-size": 11, fill: "#5d6b7a" }, svg).textContent = xlabel;
      const clip = "c" + Math.random().toString(36).slice(2);
      el("rect", { x: L, y: T, width: W - L - R, height: H - T - B }, el("clipPath", { id: clip }, svg));
      data.forEach(([xs, ys], i) => {
        const pts = xs.map((x, j) => sx(x).toFixed(1) + "," + sy(ys[j]).toFixed(1)).join(" ");
        const color = COLORS[i % COLORS.length];
        if (xs.length === 1) el("circle", { cx: sx(xs[0]), cy: sy(ys[0]), r: 3, fill: color }, svg);
        else el("polyline", { points: pts, fill: "none", stroke: color, "stroke-width": 1.6, "clip-path": "url(#" + clip + ")" }, svg);
      });
      box._cursor = el("line", { y1: T, y2: H - B, stroke: "#888", "stroke-dasharray": "3,3", visibility: "hidden" }, svg);
      box._band = el("rect", { y: T, height: H - T - B, fill: "rgba(31,111,235,.12)", visibility: "hidden" }, svg);
    }
    function xAt(evt) {
      const r = svg.getBoundingClientRect();
      const px = ((evt.clientX - r.left) / r.width) * W;
      return ext[0] + ((px - L) / (W - L - R)) * (ext[1] - ext[0]);
    }
    let dragFrom = null;
    svg.addEventListener("mousemove", (evt) => {
      const x = xAt(evt);
      const lines = [xlabel + " " + fmt(x)];
      names.forEach((n, i) => {
        const [xs, ys] = data[i];
        if (!xs.length) return;
        const j = nearest(xs, x);
        lines.push(n + ": " + fmt(ys[j]) + " (" + xlabel + " " + fmt(xs[j]) + ")");
      });
      tip.textContent = lines.join("\n");
      tip.hidden = false;
      const r = box.getBoundingClientRect();
      tip.style.left = Math.min(evt.clientX - r.left + 12, r.width - 200) + "px";
      tip.style.top = evt.clientY - r.top + 12 + "px";
      box._cursor.setAttribute("x1", sx(x)); box._cursor.setAttribute("x2", sx(x));
      box._cursor.setAttribute("visibility", "visible");
      if (dragFrom !== null) {
        const a = Math.min(sx(dragFrom), sx(x)), b = Math.max(sx(dragFrom), sx(x));
        box._band.setAttribute("x", a); box._band.setAttribute("width", b - a); box._band.setAttribute("visibility", "visible");
      }
    });
    svg.addEventListener("mouseleave", () => { tip.hidden = true; box._cursor.setAttribute("visibility", "hidden"); });
    svg.addEventListener("mousedown", (evt) => { dragFrom = xAt(evt); evt.preventDefault(); });
    svg.addEventListener("mouseup", (evt) => {
      const x = xAt(evt);
      if (dragFrom !== null && Math.abs(sx(x) - sx(dragFrom)) > 6) {
        zoom = [Math.min(dragFrom, x), Math.max(dragFrom, x)];
        box._zoom = zoom;
        render();
      }
      dragFrom = null;
      box._band.setAttribute("visibility", "hidden");
    });
    svg.addEventListener("dblclick", () => { zoom = [null, null]; box._zoom = null; render(); });
    render();
  }
  window.HpcftChart = { draw: draw };
})();
