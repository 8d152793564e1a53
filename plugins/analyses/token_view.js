/* driftkit token_view: renders the token-by-token section of a report (no network, no libraries).
   Every string from the data is set with textContent, never parsed as HTML. */
(function () {
  "use strict";
  function num(v, d) {
    if (v === null || v === undefined) return "inf";
    if (v === 0) return "0";
    var a = Math.abs(v);
    return a < 1e-3 || a >= 1e5 ? v.toExponential(d - 1) : v.toPrecision(d);
  }
  function value(mode, t) {
    if (mode.value === "kl") return t.kl === null ? Infinity : t.kl;
    if (mode.value === "rank_shift") return t.rank_a - t.rank_b;
    return t[mode.value];
  }
  function bucket(mode, t) {
    var v = value(mode, t), b = 0;
    for (var i = 0; i < mode.edges.length; i++) if (v >= mode.edges[i]) b = i + 1;
    return b;
  }
  function ink(hex) {
    var n = parseInt(hex.slice(1), 16), r = n >> 16, g = (n >> 8) & 255, b = n & 255;
    return 0.299 * r + 0.587 * g + 0.114 * b < 140 ? "#fff" : "#111";
  }
  function shown(text) {
    return text.replace(/\n/g, "\u21b5\n").replace(/\t/g, "\u2192\t");
  }
  function parseHash() {
    var out = {};
    (location.hash || "").replace(/^#/, "").split("&").forEach(function (kv) {
      var i = kv.indexOf("=");
      if (i > 0) {
        try { out[kv.slice(0, i)] = decodeURIComponent(kv.slice(i + 1)); } catch (e) { /* ignore */ }
      }
    });
    return out;
  }
  function option(sel, val, text) {
    var o = document.createElement("option");
    o.value = val;
    o.textContent = text;
    sel.appendChild(o);
  }
  function init(root) {
    root.setAttribute("data-ready", "1");
    var data = JSON.parse(root.querySelector(".dk-tv-data").textContent);
    var q = function (c) { return root.querySelector(c); };
    var selModel = q(".dk-tv-model"), selSample = q(".dk-tv-sample"), selMode = q(".dk-tv-mode");
    var legend = q(".dk-tv-legend"), ctx = q(".dk-tv-context"), box = q(".dk-tv-tokens"), tip = q(".dk-tv-tip");
    data.models.forEach(function (m, i) { option(selModel, String(i), m.label); });
    if (data.models.length < 2) selModel.parentNode.style.display = "none";
    data.modes.forEach(function (m) { option(selMode, m.key, m.label); });
    function model() { return data.models[+selModel.value] || data.models[0]; }
    function mode() {
      for (var i = 0; i < data.modes.length; i++) if (data.modes[i].key === selMode.value) return data.modes[i];
      return data.modes[0];
    }
    function fillSamples() {
      selSample.textContent = "";
      model().samples.forEach(function (s, i) {
        option(selSample, String(i), s.sample_id + " \u00b7 " + s.domain + " \u00b7 mean KL " + num(s.mean_kl, 3));
      });
    }
    function drawLegend() {
      var m = mode();
      legend.textContent = "";
      m.names.forEach(function (n, i) {
        var s = document.createElement("span");
        s.style.background = m.colors[i];
        s.style.color = ink(m.colors[i]);
        s.textContent = n;
        legend.appendChild(s);
      });
    }
    function draw() {
      var mod = model(), s = mod.samples[+selSample.value] || mod.samples[0], m = mode();
      if (!s) return;
      box.textContent = "";
      box.setAttribute("data-model", mod.label);
      box.setAttribute("data-sample", s.sample_id);
      box.setAttribute("data-mode", m.key);
      ctx.textContent = s.context ? "\u2026" + s.context : "";
      var frag = document.createDocumentFragment();
      s.tokens.forEach(function (t, i) {
        var sp = document.createElement("span"), b = bucket(m, t);
        sp.textContent = shown(t.text);
        sp.tabIndex = 0;
        sp.setAttribute("data-i", String(i));
        sp.setAttribute("data-kl", t.kl === null ? "inf" : String(t.kl));
        sp.setAttribute("data-rank-a", String(t.rank_a));
        sp.setAttribute("data-rank-b", String(t.rank_b));
        sp.setAttribute("data-bucket", String(b));
        sp.className = "dk-b" + b;
        sp.style.backgroundColor = m.colors[b];
        sp.style.color = ink(m.colors[b]);
        frag.appendChild(sp);
      });
      box.appendChild(frag);
      drawLegend();
    }
    function card(t) {
      var mod = model(), a = mod.label_a, b = mod.label_b;
      var lines = [
        "token " + JSON.stringify(t.text),
        "KL(P_B\u2016P_A)  " + num(t.kl, 4) + " nats",
        "rank under A (" + a + ")  " + t.rank_a + "   under B (" + b + ")  " + t.rank_b,
        "log p_A  " + num(t.lp_a, 4) + "   log p_B  " + num(t.lp_b, 4),
        "B's top token ranks " + t.rank_a_top_b + " under A",
        "A's top alternatives:"
      ];
      t.top_a.forEach(function (x) { lines.push("  " + JSON.stringify(x[0]) + "  p = " + num(x[1], 3)); });
      return lines.join("\n");
    }
    function showTip(ev) {
      var sp = ev.target.closest ? ev.target.closest("span[data-i]") : null;
      if (!sp || !box.contains(sp)) return;
      var mod = model(), s = mod.samples[+selSample.value] || mod.samples[0];
      tip.textContent = card(s.tokens[+sp.getAttribute("data-i")]);
      var r = sp.getBoundingClientRect(), rr = root.getBoundingClientRect();
      tip.style.left = Math.max(0, r.left - rr.left) + "px";
      tip.style.top = (r.bottom - rr.top + 4) + "px";
      tip.hidden = false;
    }
    function hideTip() { tip.hidden = true; }
    box.addEventListener("mouseover", showTip);
    box.addEventListener("focusin", showTip);
    box.addEventListener("mouseout", hideTip);
    box.addEventListener("focusout", hideTip);
    function remember() {
      var s = model().samples[+selSample.value];
      var h = "#sample=" + encodeURIComponent(s ? s.sample_id : "") + "&color=" + encodeURIComponent(mode().key);
      if (data.models.length > 1) h += "&model=" + encodeURIComponent(model().label);
      try { history.replaceState(null, "", h); } catch (e) { /* file:// may refuse: the view still works */ }
    }
    function fromHash() {
      var h = parseHash();
      if (h.model !== undefined) {
        data.models.forEach(function (m, i) { if (m.label === h.model) selModel.value = String(i); });
      }
      fillSamples();
      if (h.color !== undefined) {
        data.modes.forEach(function (m) { if (m.key === h.color) selMode.value = m.key; });
      }
      if (h.sample !== undefined) {
        model().samples.forEach(function (s, i) { if (s.sample_id === h.sample) selSample.value = String(i); });
      }
      draw();
    }
    selModel.addEventListener("change", function () { fillSamples(); draw(); remember(); });
    selSample.addEventListener("change", function () { draw(); remember(); });
    selMode.addEventListener("change", function () { draw(); remember(); });
    window.addEventListener("hashchange", fromHash);
    fromHash();
  }
  function start() {
    var roots = document.querySelectorAll("[data-dk-tv]:not([data-ready])");
    for (var i = 0; i < roots.length; i++) init(roots[i]);
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
