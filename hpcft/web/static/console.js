// hpcft console: live states, tabs, charts, log follow and the create form's estimate. No inline script (CSP).
// Copyright the hpcft authors. Licensed under the Apache License, Version 2.0.
"use strict";
(function () {
  const meta = document.querySelector('meta[name="csrf-token"]');
  const CSRF = meta ? meta.content : "";
  const TERMINAL = new Set(["success", "error", "stopped", "expired", "deleted"]);
  const $ = (id) => document.getElementById(id);

  function getJSON(url) {
    return fetch(url, { credentials: "same-origin" }).then((r) => (r.ok ? r.json() : Promise.reject(r.status)));
  }
  function setState(span, s) {
    span.textContent = s.state;
    span.className = "state s-" + s.state;
    if (s.reason !== undefined) span.title = s.reason;
  }

  // ------------------------------------------------------------------ jobs list: one batched poll for every row
  function jobsList() {
    const table = $("jobs");
    if (!table) return;
    const all = $("select-all");
    if (all) all.addEventListener("change", () => {
      table.querySelectorAll('tbody input[type="checkbox"]').forEach((c) => { c.checked = all.checked; });
    });
    function poll() {
      const rows = [...table.querySelectorAll("tbody tr[data-id]")].filter((r) => !TERMINAL.has(r.dataset.state));
      if (!rows.length) return setTimeout(poll, 4000);
      getJSON("/api/states?ids=" + rows.map((r) => r.dataset.id).join(",")).then((data) => {
        rows.forEach((r) => {
          const s = data[r.dataset.id];
          if (!s) return;
          r.dataset.state = s.state;
          setState(r.querySelector(".state"), s);
          if (s.elapsed) r.querySelector(".elapsed").textContent = s.elapsed;
        });
      }).catch(() => {}).finally(() => setTimeout(poll, 2000));
    }
    setTimeout(poll, 2000);
  }

  // ------------------------------------------------------------------ job page
  function drawPanels(box, data, xlabel, compare) {
    if (!data.panels.length) {
      box.textContent = "";
      const p = document.createElement("p"); p.className = "hint";
      p.textContent = data.count === 0 ? "no resource samples yet" : "no metrics recorded yet";
      box.appendChild(p);
      return;
    }
    const old = [...box.children];
    data.panels.forEach((panel, i) => {
      let series = panel.series;
      if (compare) {
        series = {};
        for (const k in panel.series) series["job " + data.job + " " + k] = panel.series[k];
        const other = compare.panels.find((p) => p.label === panel.label);
        if (other) for (const k in other.series) series["job " + compare.job + " " + k] = other.series[k];
      }
      let div = old[i];
      if (!div || div.tagName !== "DIV") { div = document.createElement("div"); box.appendChild(div); }
      window.HpcftChart.draw(div, { label: panel.label, unit: panel.unit, series: series }, xlabel);
    });
    old.slice(data.panels.length).forEach((d) => d.remove());
    [...box.children].filter((c) => c.tagName !== "DIV").forEach((c) => c.remove());
  }

  function jobPage() {
    const job = $("job");
    if (!job) return;
    const id = job.dataset.id;
    const tabs = [...document.querySelectorAll("#tabs a")];
    let compare = null;
    function show() {
      const name = (location.hash || "#overview").slice(1);
      tabs.forEach((a) => a.classList.toggle("active", a.dataset.tab === name));
      document.querySelectorAll("section.tab").forEach((s) => { s.hidden = s.id !== "tab-" + name; });
      if (name === "metrics") loadMetrics();
      if (name === "monitoring") loadMonitor();
      if (name === "logs") loadLog(true);
    }
    window.addEventListener("hashchange", show);
    const live = () => !TERMINAL.has(job.dataset.state);
    const visible = (name) => !$("tab-" + name).hidden;

    function loadMetrics() {
      const box = $("metrics");
      getJSON(box.dataset.url).then((d) => {
        const p = d.progress || {};
        $("progress").textContent = p.step !== undefined ? "step " + p.step + (p.loss != null ? "  loss " + (+p.loss).toFixed(4) : "") : "";
        drawPanels(box, d, "step", compare);
      }).catch(() => {});
    }
    function loadMonitor() {
      const box = $("monitor");
      getJSON(box.dataset.url).then((d) => {
        const l = $("latest");
        l.textContent = d.count ? d.count + " samples; newest per rank: " + d.latest.map((r) =>
          r.node + " rank " + r.rank + " cpu " + (r.proc_cpu_percent == null ? "-" : Math.round(r.proc_cpu_percent)) +
          "% rss " + (r.proc_rss_mb == null ? "-" : Math.round(r.proc_rss_mb)) + " MB").join("; ") : "";
        drawPanels(box, d, "minutes", null);
      }).catch(() => {});
    }
    let logOffset = -1, logFile = null;
    function loadLog(reset) {
      const pre = $("log"), file = $("logfile").value;
      if (reset || file !== logFile) { logOffset = -1; pre.textContent = ""; logFile = file; }
      getJSON(pre.dataset.url + "?file=" + encodeURIComponent(file) + "&offset=" + logOffset).then((d) => {
        if (d.missing) { pre.textContent = "(no log yet)"; return; }
        if (d.text) {
          pre.appendChild(document.createTextNode(d.text));
          if ($("follow").checked) pre.scrollTop = pre.scrollHeight;
        }
        logOffset = d.offset;
      }).catch(() => {});
    }
    $("logfile").addEventListener("change", () => {
      $("download").href = "/job/" + id + "/file?path=" + encodeURIComponent($("logfile").value);
      loadLog(true);
    });
    $("compare-form").addEventListener("submit", (e) => {
      e.preventDefault();
      const other = $("compare-id").value.trim();
      if (!other) { compare = null; return loadMetrics(); }
      getJSON("/api/job/" + encodeURIComponent(other) + "/metrics").then((d) => { compare = d; loadMetrics(); })
        .catch((s) => { $("progress").textContent = "job " + other + ": cannot compare (HTTP " + s + ")"; });
    });
    function refreshActions() {  // the buttons the new state allows (Publish, Resume after the end; no Stop)
      fetch(location.pathname, { credentials: "same-origin" }).then((r) => r.text()).then((html) => {
        const fresh = new DOMParser().parseFromString(html, "text/html").querySelector(".actions");
        const now = document.querySelector(".actions");
        if (fresh && now) now.replaceWith(document.importNode(fresh, true));
      }).catch(() => {});
    }
    function poll() {
      if (!live()) return;
      getJSON("/api/states?ids=" + id).then((data) => {
        const s = data[id];
        if (!s) return;
        const changed = s.state !== job.dataset.state;
        job.dataset.state = s.state;
        setState($("job-state"), s);
        $("job-reason").textContent = s.reason || "";
        if (changed) refreshActions();
        if (visible("metrics") || changed) loadMetrics();
        if (visible("monitoring")) loadMonitor();
        if (visible("logs") && $("follow").checked) loadLog(false);
      }).catch(() => {}).finally(() => setTimeout(poll, 2000));
    }
    show();
    setTimeout(poll, 2000);
  }

  // ------------------------------------------------------------------ create / clone form
  function createForm() {
    const form = $("create");
    if (!form) return;
    document.querySelectorAll("select.regroup").forEach((s) => s.addEventListener("change", () => $("groups").submit()));
    let timer = null, seq = 0;
    function estimate() {
      const n = ++seq;
      $("prediction").textContent = "queue prediction: …";
      fetch(form.dataset.estimate, { method: "POST", body: new URLSearchParams(new FormData(form)), credentials: "same-origin",
                                     headers: { "X-CSRF-Token": CSRF } })
        .then((r) => r.json()).then((d) => {
          if (n !== seq) return;
          document.querySelectorAll(".field-error").forEach((e) => { e.textContent = ""; });
          document.querySelectorAll(".field.has-error").forEach((e) => e.classList.remove("has-error"));
          if (d.error) {
            const slot = d.field ? $("err-" + d.field) : null;
            if (slot) { slot.textContent = d.error; slot.parentElement.classList.add("has-error"); }
            $("prediction").textContent = slot ? "fix the field marked in red" : "error: " + d.error;
            $("memory").textContent = "";
            $("data-check").textContent = "";
            return;
          }
          $("prediction").textContent = "queue prediction: " + d.prediction;
          $("memory").textContent = d.memory.join("\n");
          $("data-check").textContent = (d.data || []).join("\n");
        }).catch(() => {});
    }
    form.addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(estimate, 600); });
    form.addEventListener("change", () => { clearTimeout(timer); timer = setTimeout(estimate, 200); });
    estimate();
  }

  // ------------------------------------------------------------------ a sweep: its points' curves overlaid
  function sweepCurves() {
    const box = $("sweep-curves");
    if (!box || !box.dataset.jobs) return;
    const ids = box.dataset.jobs.split(",");
    Promise.all(ids.map((i) => getJSON("/api/job/" + i + "/metrics").catch(() => null))).then((all) => {
      const panels = {};
      all.filter(Boolean).forEach((d) => d.panels.forEach((p) => {
        const merged = panels[p.label] || (panels[p.label] = { label: p.label, unit: p.unit, series: {} });
        for (const k in p.series) if (k === "train" || k === "validation") merged.series["job " + d.job + " " + k] = p.series[k];
      }));
      drawPanels(box, { panels: Object.values(panels), count: 1 }, "step", null);
    });
  }

  document.addEventListener("DOMContentLoaded", () => { jobsList(); jobPage(); createForm(); sweepCurves(); });
})();
