/* reverie playground: one page over the server's own API (docs/serve.md, "Playground").
 * GET /v1/reverie/options says what each served model takes (names and ranges from the
 * registries); images come from POST /v1/images/generations, text streams from
 * POST /v1/completions. Every failure is written on the page, and the page stays usable. */
(function () {
  "use strict";

  const $ = (id) => document.getElementById(id);
  const state = { key: "", options: null, models: {}, server: "unknown", busy: false };
  const PERSON = {
    type: "object",
    properties: { name: { type: "string", maxLength: 8 }, age: { type: "integer", minimum: 0, maximum: 120 } },
    required: ["name", "age"],
    additionalProperties: false,
  };

  class PageError extends Error {}

  // ------------------------------------------------------------------ the API

  function headers(json) {
    const h = {};
    if (state.key) h.Authorization = `Bearer ${state.key}`;
    if (json) h["Content-Type"] = "application/json";
    return h;
  }

  /** fetch, with every failure turned into a PageError whose message is for people. */
  async function api(path, body) {
    let res;
    try {
      res = await fetch(path, body === undefined ? { headers: headers(false) }
        : { method: "POST", headers: headers(true), body: JSON.stringify(body) });
    } catch (err) {
      setServer("down");
      throw new PageError(`Could not reach the server (${err.message}). It may have stopped, or be restarting and loading its models; the page keeps trying and says when it is back.`);
    }
    if (!res.ok) {
      let message = `${res.status} ${res.statusText}`;
      try {
        const j = await res.json();
        if (j && j.error && j.error.message) message = `${res.status}: ${j.error.message}`;
      } catch (_) { /* not JSON: keep the status line */ }
      if (res.status === 401) $("key-form").hidden = false;
      throw new PageError(message);
    }
    return res;
  }

  function showError(box, err) {
    const el = $(box);
    if (!err) { el.hidden = true; el.textContent = ""; return; }
    el.textContent = err instanceof PageError ? err.message : `Unexpected error: ${err.message || err}`;
    el.hidden = false;
  }

  // ------------------------------------------------------------------ server status

  function setServer(what, detail) {
    state.server = what;
    const el = $("status");
    el.className = `status ${what}`;
    el.textContent = {
      ok: "ready", loading: "loading models…", down: "server not answering, retrying…",
      unknown: "connecting…", key: "API key needed",
    }[what] + (detail ? ` ${detail}` : "");
    el.title = what === "down" ? "The server stopped, or it is restarting and loading its models; " +
      "this page polls /health and asks for the models again when it is back." : "";
  }

  /** Poll /health (open even with an API key): ready, loading, or gone. A server that
   * comes back (restarted: its models may differ) is asked for its options again. */
  async function poll() {
    try {
      const res = await fetch("/health", { cache: "no-store" });
      const h = await res.json();
      const loading = h.status !== "ok";
      const back = state.server === "down" || state.server === "loading";
      if (loading) setServer("loading", h.loading ? `(${h.loading.join(", ")})` : "");
      else if (state.server !== "key") setServer("ok");
      if (!loading && state.server !== "key" && (!state.options || back)) await loadOptions();
      if (h.failed && Object.keys(h.failed).length) {  // the other models are served
        showError("page-error", new PageError(Object.entries(h.failed)
          .map(([id, why]) => `The model ${id} failed to load (${why}).`).join(" ")));
      }
    } catch (_) {
      setServer("down");
    }
    setTimeout(poll, state.server === "ok" ? 5000 : 1500);
  }

  async function loadOptions() {
    try {
      const res = await api("/v1/reverie/options");
      state.options = await res.json();
    } catch (err) {
      if (!$("key-form").hidden) setServer("key");
      showError("page-error", err);
      return;
    }
    showError("page-error", null);
    setServer("ok");
    const pick = $("model");
    const before = pick.value;
    pick.replaceChildren();
    state.models = {};
    for (const m of state.options.models) {
      state.models[m.id] = m;
      pick.append(new Option(`${m.id} (${m.kind})`, m.id));
    }
    if (before in state.models) pick.value = before;
    selectModel();
  }

  // ------------------------------------------------------------------ forms

  function fill(select, items, chosen) {
    select.replaceChildren();
    for (const it of items) {
      const o = new Option(it.label ?? it.name, it.value ?? it.name);
      if (it.description) o.title = it.description;
      select.append(o);
    }
    if (chosen !== undefined) select.value = chosen;
  }

  function selectModel() {
    const m = state.models[$("model").value];
    if (!m) return;
    const text = m.kind === "text";
    $("image-panel").hidden = text;
    $("text-panel").hidden = !text;
    (text ? setupText : setupImage)(m);
  }

  function setupImage(m) {
    $("label-row").hidden = m.prompt !== "class";
    $("prompt-row").hidden = $("negative-row").hidden = m.prompt !== "text";
    if (m.prompt === "class") {
      fill($("label"), [{ name: "(none: unconditional)", value: "" },
        ...m.classes.map((c) => ({ name: c }))], m.classes[Math.min(7, m.classes.length - 1)]);
    }
    fill($("sampler"), m.samplers, m.sampler);
    const other = m.samplers.find((s) => s.name !== m.sampler && s.name === "euler") || m.samplers.find((s) => s.name !== m.sampler);
    fill($("sampler-b"), m.samplers, other ? other.name : m.sampler);
    fill($("grid"), [{ name: "(the sampler's)", value: "" }, ...m.grids.map((g) => ({ name: g }))], "");
    $("steps").min = m.steps.min; $("steps").max = m.steps.max; $("steps").value = m.steps.default;
    $("n").max = m.n.max; $("n").value = Math.min(4, m.n.max);
    $("guidance-rows").hidden = m.guidance.length === 0;
    $("mode-scales").hidden = m.guidance.length === 0;
    fill($("guidance"), m.guidance, "cfg");
    $("scale").value = m.guidance.length ? Math.max(m.guidance_scale.default, 2) : m.guidance_scale.default;
    $("scale-b").value = m.guidance_scale.default === 1 ? 4 : m.guidance_scale.default * 2;
    scaleHint();
  }

  function scaleHint() {
    const m = state.models[$("model").value];
    const g = m && m.guidance.find((x) => x.name === $("guidance").value);
    if (!g) { $("scale-hint").textContent = ""; return; }
    const hi = g.max === null ? "∞" : g.max;
    $("scale").min = g.min; $("scale").max = g.max ?? "";
    $("scale-hint").textContent = `${g.description}. Scale ${g.min} to ${hi}; 1 is the conditional model` +
      (g.samplers ? `; runs with ${g.samplers.join(", ")} only.` : ".");
  }

  function setupText(m) {
    fill($("text-sampler"), m.samplers.map((s) => ({ ...s, label: s.revises ? `${s.name} (revises: no stream, no constraint)` : s.name })), m.sampler);
    $("max-tokens").min = m.max_tokens.min; $("max-tokens").max = m.max_tokens.max; $("max-tokens").value = m.max_tokens.default;
    $("text-steps").min = m.steps.min; $("text-steps").max = m.steps.max;
    $("temperature").min = m.temperature.min; $("temperature").max = m.temperature.max;
    if ($("temperature").value === "") $("temperature").value = m.temperature.default;
    if ($("constraint").value === "") $("constraint").value = JSON.stringify(PERSON, null, 2);
  }

  const num = (id) => ($(id).value === "" ? undefined : Number($(id).value));
  const mode = () => document.querySelector("input[name=mode]:checked").value;

  function syncMode() {
    $("b-sampler-row").hidden = mode() !== "samplers";
    $("b-scale-row").hidden = mode() !== "scales";
  }

  // ------------------------------------------------------------------ images

  function imageBody(m, overrides) {
    const body = { model: m.id, n: num("n"), seed: num("seed"), steps: num("steps"), sampler: $("sampler").value };
    if ($("grid").value) body.grid = $("grid").value;
    if (m.prompt === "class" && $("label").value !== "") body.label = $("label").value;
    if (m.prompt === "text") {
      body.prompt = $("prompt").value;
      if ($("negative").value) body.negative_prompt = $("negative").value;
    }
    if (m.guidance.length && (m.prompt !== "class" || body.label !== undefined)) {
      body.guidance = $("guidance").value;
      body.guidance_scale = num("scale");
    }
    return Object.assign(body, overrides);
  }

  /** The settings that drew image k: "seed · class" first, then how it was sampled
   * (the prompt is written once, above the results). */
  function caption(body, k) {
    const who = [`seed ${body.seed + k}`];
    if (body.label !== undefined) who.push(`class ${body.label}`);
    const how = [body.sampler, `${body.steps} steps`, `grid ${body.grid || "default"}`];
    if (body.guidance) how.push(`${body.guidance} ${body.guidance_scale}`);
    return [who.join(" · "), how.join(" · ")];
  }

  function captionEl(lines) {
    const cap = document.createElement("figcaption");
    const first = document.createElement("b");
    first.textContent = lines[0];
    cap.append(first, document.createElement("br"), lines[1]);
    return cap;
  }

  function summary(m, body) {
    const p = document.createElement("p");
    p.className = "summary";
    const name = document.createElement("b");
    name.textContent = m.id;
    p.append(name);
    if (body.prompt) p.append(` · “${body.prompt}”`);
    if (body.negative_prompt) p.append(` · not “${body.negative_prompt}”`);
    if (m.prompt === "class" && body.label === undefined) p.append(" · unconditional");
    return p;
  }

  function pointsCard(points, body) {  // models whose samples are 2-D points (two-moons)
    const ns = "http://www.w3.org/2000/svg";
    const svg = document.createElementNS(ns, "svg");
    const xs = points.map((p) => p[0]), ys = points.map((p) => p[1]);
    const pad = 0.3, x0 = Math.min(...xs) - pad, x1 = Math.max(...xs) + pad;
    const y0 = Math.min(...ys) - pad, y1 = Math.max(...ys) + pad;
    svg.setAttribute("viewBox", `${x0} ${-y1} ${x1 - x0} ${y1 - y0}`);
    svg.setAttribute("class", "points");
    for (const [x, y] of points) {
      const c = document.createElementNS(ns, "circle");
      c.setAttribute("cx", x); c.setAttribute("cy", -y); c.setAttribute("r", (x1 - x0) / 80);
      svg.append(c);
    }
    const fig = document.createElement("figure");
    const lines = caption(body, 0);
    lines[0] = lines[0].replace(/^seed \d+/, `${points.length} samples, seeds ${body.seed}..${body.seed + points.length - 1}`);
    fig.append(svg, captionEl(lines));
    return fig;
  }

  function column(title, body, data) {
    const col = document.createElement("div");
    col.className = "column";
    if (title) {
      const h = document.createElement("h2");
      h.textContent = title;
      col.append(h);
    }
    const grid = document.createElement("div");
    grid.className = "cards";
    if (data.length && data[0].b64_json === null) {
      grid.append(pointsCard(data.map((d) => d.sample), body));
    } else {
      data.forEach((d, k) => {
        const fig = document.createElement("figure");
        const img = new Image();
        img.src = `data:image/png;base64,${d.b64_json}`;
        img.alt = caption(body, k).join(" · ");
        fig.append(img, captionEl(caption(body, k)));
        grid.append(fig);
      });
    }
    col.append(grid);
    return col;
  }

  async function generateImages(ev) {
    ev.preventDefault();
    if (state.busy) return;
    const m = state.models[$("model").value];
    if (!m) return;
    const runs = [{ title: "", body: imageBody(m, {}) }];
    if (mode() === "samplers") {
      runs[0].title = `A: ${$("sampler").value}`;
      runs.push({ title: `B: ${$("sampler-b").value}`, body: imageBody(m, { sampler: $("sampler-b").value }) });
    } else if (mode() === "scales") {
      runs[0].title = `A: scale ${num("scale")}`;
      runs.push({ title: `B: scale ${num("scale-b")}`, body: imageBody(m, { guidance_scale: num("scale-b") }) });
    }
    busy(true, "generate");
    showError("image-error", null);
    try {
      const cols = [];
      for (const run of runs) {
        const res = await api("/v1/images/generations", run.body);
        cols.push(column(run.title, run.body, (await res.json()).data));
      }
      const out = $("results");
      const wrap = document.createElement("div");
      wrap.className = runs.length > 1 ? "compare" : "";
      wrap.append(...cols);
      out.replaceChildren(summary(m, runs[0].body), wrap);
    } catch (err) {
      showError("image-error", err);
    } finally {
      busy(false, "generate");
    }
  }

  // ------------------------------------------------------------------ text

  /** Check the output box against the constraint, in this browser. */
  function badge() {
    const el = $("badge");
    const text = $("text-output").value;
    const kind = $("constraint-kind").value;
    let r;
    if (text === "") r = { state: "none", message: "no output yet" };
    else if (kind === "none") r = { state: "none", message: "no constraint to check" };
    else if (kind === "regex") r = reverieCheck.checkRegex($("constraint").value, text);
    else {
      let schema;
      try { schema = JSON.parse($("constraint").value); } catch (err) {
        r = { state: "unchecked", message: `the schema is not JSON (${err.message})` };
      }
      if (!r) r = reverieCheck.checkJson(schema, text);
    }
    el.className = `badge ${r.state}`;
    el.textContent = { valid: "valid", invalid: "invalid", unchecked: "not checked", none: "" }[r.state] || "";
    if (r.state === "none") el.textContent = r.message;
    el.title = r.message;
    el.dataset.state = r.state;
    $("badge-why").textContent = r.state === "none" ? "" : r.message;
  }

  function textBody(m, sampler) {
    const body = { model: m.id, prompt: $("text-prompt").value, max_tokens: num("max-tokens"), seed: num("text-seed"), sampler: sampler.name };
    if (num("text-steps") !== undefined) body.steps = num("text-steps");
    if (num("temperature") !== undefined) body.temperature = num("temperature");
    const kind = $("constraint-kind").value;
    if (kind === "json_schema") {
      let schema;
      try {
        schema = JSON.parse($("constraint").value);
      } catch (err) {
        throw new PageError(`The JSON schema does not parse: ${err.message}. Fix it, or choose "nothing".`);
      }
      body.response_format = { type: "json_schema", json_schema: { name: "playground", schema } };
    } else if (kind === "regex") {
      body.regex = $("constraint").value;
    }
    body.stream = !sampler.revises;
    return body;
  }

  /** Read server-sent events; call onData(obj) per event until [DONE]. */
  async function readEvents(res, onData) {
    const reader = res.body.getReader();
    const dec = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buf += dec.decode(value, { stream: true });
      let cut;
      while ((cut = buf.indexOf("\n\n")) >= 0) {
        const event = buf.slice(0, cut);
        buf = buf.slice(cut + 2);
        for (const line of event.split("\n")) {
          if (!line.startsWith("data: ")) continue;
          const data = line.slice(6);
          if (data === "[DONE]") return;
          onData(JSON.parse(data));
        }
      }
    }
  }

  async function generateText(ev) {
    ev.preventDefault();
    if (state.busy) return;
    const m = state.models[$("model").value];
    if (!m) return;
    const sampler = m.samplers.find((s) => s.name === $("text-sampler").value);
    showError("text-error", null);
    const out = $("text-output");
    const meta = $("text-meta");
    let body;
    try {
      body = textBody(m, sampler);
    } catch (err) {
      showError("text-error", err);
      busy(false, "text-generate");  // (counts the run: nothing was sent)
      return;
    }
    busy(true, "text-generate");
    out.value = "";
    out.readOnly = true;
    out.dataset.done = "false";
    badge();
    const t0 = performance.now();
    let pieces = 0, finish = "";
    $("pieces").replaceChildren();
    $("pieces-box").hidden = !body.stream;
    try {
      const res = await api("/v1/completions", body);
      if (body.stream) {
        await readEvents(res, (obj) => {
          if (obj.error) throw new PageError(`The stream failed: ${obj.error.message}`);
          const c = obj.choices && obj.choices[0];
          if (!c) return;
          if (c.text) {
            out.value += c.text;
            pieces += 1;
            piece(c.text, performance.now() - t0);
            badge();
          }
          if (c.finish_reason) finish = c.finish_reason;
        });
      } else {
        const j = await res.json();
        out.value = j.choices[0].text;
        finish = j.choices[0].finish_reason;
        pieces = 1;
      }
      const secs = ((performance.now() - t0) / 1000).toFixed(2);
      meta.textContent = `${body.stream ? `${pieces} pieces streamed` : "not streamed (this sampler revises tokens)"} · finish: ${finish} · ${secs} s. Edit the output to check another string.`;
      out.dataset.pieces = String(pieces);
    } catch (err) {
      showError("text-error", err);
      meta.textContent = "The output above is what arrived before the error.";
    } finally {
      out.readOnly = false;
      out.dataset.done = "true";
      badge();
      busy(false, "text-generate");
    }
  }

  /** One streamed piece, as it arrived, with its time since the request. */
  function piece(text, ms) {
    const li = document.createElement("li");
    const code = document.createElement("code");
    code.textContent = text;
    const when = document.createElement("span");
    when.textContent = `${Math.round(ms)} ms`;
    li.append(code, when);
    $("pieces").append(li);
  }

  function busy(on, button) {
    state.busy = on;
    document.body.dataset.busy = String(on);
    if (!on) document.body.dataset.runs = String(Number(document.body.dataset.runs || 0) + 1);
    const b = $(button);
    b.disabled = on;
    b.textContent = on ? "generating…" : "generate";
  }

  // ------------------------------------------------------------------ wiring

  $("model").addEventListener("change", () => { selectModel(); showError("image-error", null); showError("text-error", null); });
  $("guidance").addEventListener("change", scaleHint);
  document.querySelectorAll("input[name=mode]").forEach((r) => r.addEventListener("change", syncMode));
  $("image-form").addEventListener("submit", generateImages);
  $("text-form").addEventListener("submit", generateText);
  $("text-output").addEventListener("input", badge);
  $("constraint").addEventListener("input", badge);
  $("constraint-kind").addEventListener("change", () => {
    const kind = $("constraint-kind").value;
    $("constraint-row").hidden = kind === "none";
    if (kind === "regex" && $("constraint").value.trim().startsWith("{")) $("constraint").value = "[a-z]+( [a-z]+)*";
    if (kind === "json_schema" && !$("constraint").value.trim().startsWith("{")) $("constraint").value = JSON.stringify(PERSON, null, 2);
    badge();
  });
  $("key-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    state.key = $("key").value.trim();
    setServer("unknown");
    loadOptions();
  });
  syncMode();
  poll();
})();
