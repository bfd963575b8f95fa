// keyguard dashboard: the keys table, its dialogs and a usage chart, the price table and
// the plans, over the JSON API.
// Plain DOM (no innerHTML with data), so nothing a key's name holds can become markup.
"use strict";

(() => {
  const $ = (selector, root = document) => root.querySelector(selector);
  const DASH = "–";
  const PALETTE = ["#2952cc", "#e8871e", "#2e9e6a", "#c2417a", "#7a5bd1", "#1f9bb5",
    "#b8860b", "#d64541", "#5f6b7a", "#8fb339"];

  const state = { session: null, keys: [], prices: [], plans: [], usageFor: null,
    usageRows: [] };
  const VIEWS = { keys: "Keys", prices: "Prices", plans: "Plans" };

  // --- the API -------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, detail) {
      super(detail);
      this.status = status;
    }
  }

  async function api(method, path, body) {
    const headers = { Accept: "application/json" };
    if (method !== "GET") headers["X-CSRF-Token"] = state.session.csrf;
    const init = { method, headers, credentials: "same-origin", cache: "no-store" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const resp = await fetch(path, init);
    if (resp.status === 401) {
      window.location.assign("/login");
      throw new ApiError(401, "signed out");
    }
    const data = await resp.json().catch(() => null);
    if (!resp.ok) {
      const detail = data && data.detail ? data.detail : `${resp.status} ${resp.statusText}`;
      throw new ApiError(resp.status, detail);
    }
    return data;
  }

  async function allPages(path) {
    // Every item of a paged list (/v1/keys, /v1/prices, /v1/plans), page after page.
    const out = [];
    let cursor = null;
    do {
      const query = cursor ? `&cursor=${encodeURIComponent(cursor)}` : "";
      const page = await api("GET", `${path}?limit=1000${query}`);
      out.push(...page.items);
      cursor = page.next_cursor;
    } while (cursor);
    return out;
  }

  const allKeys = () => allPages("/v1/keys");

  // --- small helpers -------------------------------------------------------------------

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs)) {
      if (name === "class") node.className = value;
      else if (name === "text") node.textContent = value;
      else if (name.startsWith("data-")) node.setAttribute(name, value);
      else node[name] = value;
    }
    for (const child of children) node.append(child);
    return node;
  }

  function svg(tag, attrs = {}) {
    const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
    return node;
  }

  const number = (n) => (n === null || n === undefined ? DASH : Number(n).toLocaleString("en"));
  const day = (iso) => (iso ? iso.slice(0, 10) : DASH);
  const isCreator = () => state.session && state.session.role === "admin";

  function when(iso) {
    if (!iso) return DASH;
    return iso.replace("T", " ").replace(/(:\d\d)(\.\d+)?Z$/, "$1 UTC");
  }

  function statusOf(key) {
    if (key.status === "active" && key.expires_at && Date.parse(key.expires_at) <= Date.now()) {
      return "expired";
    }
    return key.status;
  }

  function say(text, kind = "ok") {
    const box = $("#message");
    box.textContent = text;
    box.className = `message ${kind}`;
    box.hidden = !text;
  }

  // --- the table -----------------------------------------------------------------------

  function matches(key) {
    const query = $("#search").value.trim().toLowerCase();
    const status = $("#filter-status").value;
    const type = $("#filter-type").value;
    const env = $("#filter-env").value;
    if (status && statusOf(key) !== status) return false;
    if (type && key.type !== type) return false;
    if (env && (key.env || "") !== env) return false;
    if (!query) return true;
    const hay = [key.name, key.id, key.owner, key.env, ...(key.models || [])];
    return hay.some((v) => v && String(v).toLowerCase().includes(query));
  }

  function remainingCell(key) {
    if (key.unlimited) return "unlimited";
    if (key.type === "subscription" && key.cycle_quota !== undefined) {
      return `${number(key.remaining)} of ${number(key.cycle_quota)} / ${key.cycle}`;
    }
    return number(key.remaining);
  }

  function actionButton(label, action, id, kind = "") {
    // id: the key id, model pattern or plan name the button acts on.
    return el("button", { type: "button", class: `small ${kind}`, text: label,
      "data-action": action, "data-id": id });
  }

  function actionsCell(id, everyone, writers) {
    // A row's buttons, each [label, data-action, kind]: `everyone` for every session,
    // `writers` only for sessions that may write (a viewer sees none of them).
    const buttons = isCreator() ? [...everyone, ...writers] : everyone;
    return el("td", { class: "actions" },
      ...buttons.map(([label, action, kind]) => actionButton(label, action, id, kind)));
  }

  function row(key) {
    const status = statusOf(key);
    const actions = actionsCell(key.id, [["Usage", "usage", "ghost"]], [
      key.status === "active" ? ["Disable", "disable", "warn"] : ["Enable", "enable"],
      ["Edit", "edit", "ghost"],
      ["Top up", "topup", "ghost"],
      ["Rotate", "rotate", "ghost"],
      ["Delete", "delete", "danger"],
    ]);
    const tr = el("tr", { "data-id": key.id },
      el("td", { class: "name", text: key.name || DASH }),
      el("td", { class: "mono", text: key.id }),
      el("td", { text: key.type }),
      el("td", {}, el("span", { class: `badge ${status}`, text: status })),
      el("td", { class: "num", text: remainingCell(key) }),
      el("td", { class: "num", text: number(key.used) }),
      el("td", { class: "num", text: number(key.held) }),
      el("td", { text: key.expires_at ? day(key.expires_at) : "never" }),
      el("td", { text: key.env || DASH }),
      el("td", { text: key.owner || DASH }),
      el("td", { text: when(key.last_used_at || key.last_used) }),
      actions,
    );
    return tr;
  }

  function render() {
    const envs = [...new Set(state.keys.map((k) => k.env).filter(Boolean))].sort();
    const envSelect = $("#filter-env");
    const chosen = envSelect.value;
    envSelect.replaceChildren(el("option", { value: "", text: "Any environment" }),
      ...envs.map((e) => el("option", { value: e, text: e })));
    envSelect.value = envs.includes(chosen) ? chosen : "";
    const shown = state.keys.filter(matches);
    $("#keys tbody").replaceChildren(...shown.map(row));
    $("#empty").hidden = shown.length > 0;
    $("#count").textContent = `${shown.length} of ${state.keys.length} keys`;
  }

  async function reload() {
    try {
      state.keys = await allKeys();
      render();
    } catch (err) {
      if (err.status !== 401) say(`Could not load the keys: ${err.message}`, "bad");
    }
  }

  // --- dialogs -------------------------------------------------------------------------

  function confirmAction(text, label) {
    const dialog = $("#confirm-dialog");
    $("#confirm-text").textContent = text;
    $("#confirm-yes").textContent = label;
    return new Promise((resolve) => {
      const done = (answer) => {
        $("#confirm-yes").onclick = null;
        $("#confirm-no").onclick = null;
        dialog.onclose = null;
        if (dialog.open) dialog.close();
        resolve(answer);
      };
      $("#confirm-yes").onclick = () => done(true);
      $("#confirm-no").onclick = () => done(false);
      dialog.onclose = () => done(false);
      dialog.showModal();
    });
  }

  function formError(form, text) {
    $(".error", form).textContent = text;
  }

  function blankForm(selector) {
    // A dialog's form, emptied of earlier input and of its last error.
    const form = $(selector);
    form.reset();
    formError(form, "");
    return form;
  }

  function listField(text) {
    return text.split(",").map((s) => s.trim()).filter(Boolean);
  }

  function createBody(form) {
    const f = form.elements;
    const body = { type: f.type.value };
    for (const name of ["name", "cycle", "expires", "env", "owner"]) {
      const value = f[name].value.trim();
      if (value && (name !== "cycle" || body.type === "subscription")) body[name] = value;
    }
    for (const name of ["quota", "rpm", "tpm"]) {
      if (f[name].value !== "") body[name] = Number(f[name].value);
    }
    for (const name of ["models", "allowed_ips"]) {
      const items = listField(f[name].value);
      if (items.length) body[name] = items;
    }
    if (f.unlimited.checked) body.unlimited = true;
    if (f.payg.checked) body.payg = true;
    return body;
  }

  function showSecret(title, secret, info, grace = "") {
    // The show-once dialog, for a created key and a rotated one alike.
    const input = $("#created-key");
    input.value = secret;
    $("#created-title").textContent = title;
    $("#created-info").textContent = info;
    $("#created-grace").textContent = grace;
    $("#created-grace").hidden = !grace;
    $("#copy-key").textContent = "Copy";
    $("#created-dialog").showModal();
    input.focus();
    input.select();
  }

  function showCreated(created) {
    showSecret("Your new key", created.key,
      `${created.name || "(no name)"} · ${created.id} · ${created.type}`);
  }

  function showRotated(key, rotated, grace) {
    const previous = grace === "0" || !rotated.grace_until
      ? "The previous secret stopped working at once."
      : `The previous secret keeps working until ${when(rotated.grace_until)}.`;
    showSecret(`The new secret of ${key.name || key.id}`, rotated.key,
      `${key.name || "(no name)"} · ${rotated.id} · ${key.type}`, previous);
  }

  async function copyKey() {
    const input = $("#created-key");
    try {
      await navigator.clipboard.writeText(input.value);
    } catch {
      input.select();
      document.execCommand("copy");
    }
    $("#copy-key").textContent = "Copied";
  }

  function forgetCreated() {
    // The key lives only in this input while the dialog is open; nothing else keeps it.
    $("#created-key").value = "";
    $("#created-info").textContent = "";
    $("#created-grace").textContent = "";
  }

  function fillForm(form, fields, values) {
    // Each field's value from values (a checkbox: whether it is checked).
    for (const name of fields) {
      const input = form.elements[name];
      if (input.type === "checkbox") input.checked = values[name];
      else input.value = values[name];
    }
  }

  function changedFields(form, fields) {
    // [name, value] of each field that differs from form.initial (text trimmed, a
    // checkbox as true or false): what an edit sends.
    const changed = [];
    for (const name of fields) {
      const input = form.elements[name];
      const value = input.type === "checkbox" ? input.checked : input.value.trim();
      if (value !== form.initial[name]) changed.push([name, value]);
    }
    return changed;
  }

  const editFields = ["name", "quota", "unlimited", "expires", "models", "allowed_ips", "rpm",
    "tpm", "payg", "env", "owner"];

  function editValues(key) {
    return {
      name: key.name || "",
      quota: key.unlimited ? "" : String(key.type === "subscription" ? key.cycle_quota ?? "" : key.remaining ?? ""),
      unlimited: Boolean(key.unlimited),
      expires: key.expires_at ? key.expires_at.replace(/\.\d+Z$/, "Z") : "never",
      models: key.models ? key.models.join(", ") : "*",
      allowed_ips: key.allowed_ips ? key.allowed_ips.join(", ") : "*",
      rpm: String(key.rpm || 0),
      tpm: String(key.tpm || 0),
      payg: Boolean(key.payg),
      env: key.env || "",
      owner: key.owner || "",
    };
  }

  function openEdit(key) {
    const form = $("#edit-form");
    const initial = editValues(key);
    fillForm(form, editFields, initial);
    form.dataset.id = key.id;
    form.initial = initial;
    $("#edit-title").textContent = `Edit ${key.name || key.id}`;
    formError(form, "");
    $("#edit-dialog").showModal();
  }

  function editBody(form) {
    const body = {};
    for (const [name, value] of changedFields(form, editFields)) {
      if (["quota", "rpm", "tpm"].includes(name)) body[name] = value === "" ? 0 : Number(value);
      else if (name === "models" || name === "allowed_ips") body[name] = listField(value || "*");
      else body[name] = value;
    }
    return body;
  }

  // --- usage chart ---------------------------------------------------------------------

  function last30Days() {
    const days = [];
    const today = new Date();
    for (let back = 29; back >= 0; back--) {
      const d = new Date(Date.UTC(today.getUTCFullYear(), today.getUTCMonth(),
        today.getUTCDate() - back));
      days.push(d.toISOString().slice(0, 10));
    }
    return days;
  }

  function metricOf(rowData, metric) {
    if (metric === "tokens") return (rowData.input_tokens || 0) + (rowData.output_tokens || 0);
    return rowData[metric] || 0;
  }

  function niceStep(value) {
    // The smallest of 1, 2, 5 × 10^n that is at least value.
    if (value <= 0) return 1;
    const power = 10 ** Math.floor(Math.log10(value));
    for (const step of [1, 2, 5, 10]) {
      if (step * power >= value) return step * power;
    }
    return 10 * power;
  }

  function drawUsage() {
    const metric = $("#usage-metric").value;
    const days = last30Days();
    const rows = state.usageRows.filter((r) => days.includes(r.date));
    const models = [...new Set(rows.map((r) => r.model))].sort();
    const chart = $("#usage-chart");
    const legend = $("#usage-legend");
    const total = rows.reduce((sum, r) => sum + metricOf(r, metric), 0);
    $("#usage-empty").hidden = total > 0;
    if (total === 0) {
      chart.replaceChildren();
      legend.replaceChildren();
      return;
    }
    const colour = new Map(models.map((m, i) => [m, PALETTE[i % PALETTE.length]]));
    const perDay = new Map(days.map((d) => [d, []]));
    for (const r of rows) perDay.get(r.date).push(r);
    const dayTotals = days.map((d) => perDay.get(d).reduce((s, r) => s + metricOf(r, metric), 0));
    const step = niceStep(Math.max(...dayTotals) / 5);
    const ticks = Math.max(1, Math.ceil(Math.max(...dayTotals) / step));
    const top = step * ticks;

    const W = 900, H = 280, left = 64, right = 12, topPad = 12, bottom = 36;
    const plotW = W - left - right, plotH = H - topPad - bottom;
    const slot = plotW / days.length, barW = Math.max(4, slot * 0.7);
    const y = (v) => topPad + plotH - (v / top) * plotH;
    const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", class: "usage-svg" });
    root.append(Object.assign(svg("title"), { textContent: `${metric} per day by model` }));
    for (let i = 0; i <= ticks; i++) {
      const v = step * i;
      root.append(svg("line", { x1: left, x2: W - right, y1: y(v), y2: y(v), class: "grid-line" }));
      const label = svg("text", { x: left - 8, y: y(v) + 4, "text-anchor": "end", class: "axis" });
      label.textContent = number(Math.round(v));
      root.append(label);
    }
    days.forEach((date, i) => {
      const x = left + i * slot + (slot - barW) / 2;
      let base = 0;
      for (const r of perDay.get(date)) {
        const v = metricOf(r, metric);
        if (!v) continue;
        const rect = svg("rect", { x, y: y(base + v), width: barW,
          height: Math.max(1, y(base) - y(base + v)), fill: colour.get(r.model), rx: 1.5,
          "data-date": date, "data-model": r.model });
        const tip = svg("title");
        tip.textContent = `${date} · ${r.model}: ${number(v)} ${metric}` +
          ` (${number(r.requests)} requests)`;
        rect.append(tip);
        root.append(rect);
        base += v;
      }
      if (i % 5 === 4 || i === 0) {
        const label = svg("text", { x: x + barW / 2, y: H - bottom + 18, "text-anchor": "middle",
          class: "axis" });
        label.textContent = date.slice(5);
        root.append(label);
      }
    });
    root.append(svg("line", { x1: left, x2: W - right, y1: y(0), y2: y(0), class: "base-line" }));
    chart.replaceChildren(root);
    legend.replaceChildren(...models.map((m) => {
      const sum = rows.filter((r) => r.model === m).reduce((s, r) => s + metricOf(r, metric), 0);
      const swatch = el("span", { class: "swatch" });
      swatch.style.background = colour.get(m);
      return el("li", {}, swatch, el("span", { text: `${m} · ${number(sum)}` }));
    }));
  }

  async function showUsage(key) {
    state.usageFor = key.id;
    state.usageRows = [];
    $("#usage").hidden = false;
    $("#usage-title").textContent = `Usage of ${key.name || key.id}`;
    try {
      const data = await api("GET", `/v1/keys/${encodeURIComponent(key.id)}/usage`);
      state.usageRows = Array.isArray(data && data.days) ? data.days : [];
    } catch (err) {
      // No usage route yet (404), or no history for this key (400/404): nothing to draw.
      if (![400, 404].includes(err.status)) say(`Could not load usage: ${err.message}`, "bad");
    }
    if (state.usageFor === key.id) drawUsage();
    $("#usage").scrollIntoView({ block: "nearest" });
  }

  // --- rotation ------------------------------------------------------------------------

  function openRotate(key) {
    const form = blankForm("#rotate-form");  // the grace goes back to the API's default, 0
    form.dataset.id = key.id;
    $("#rotate-title").textContent = `Rotate ${key.name || key.id}`;
    $("#rotate-dialog").showModal();
  }

  async function rotate(form) {
    const key = state.keys.find((k) => k.id === form.dataset.id);
    if (!key) return $("#rotate-dialog").close();
    const label = key.name ? `${key.name} (${key.id})` : key.id;
    const grace = form.elements.grace.value.trim() || "0";
    const previous = grace === "0"
      ? "the current secret stops working at once"
      : `the current secret keeps working for ${grace}`;
    $("#rotate-dialog").close();
    const question = `Rotate ${label}? It gets a new secret, shown once; ${previous}.`;
    if (!(await confirmAction(question, "Rotate"))) return;
    try {
      const rotated = await api("POST", `/v1/keys/${encodeURIComponent(key.id)}/rotate`,
        { grace });
      showRotated(key, rotated, grace);
      say(`Rotated ${label}.`);
      reload();
    } catch (err) {
      if (err.status === 401) return;
      // Back to the grace, with the API's reason: nothing was changed.
      formError(form, err.message);
      $("#rotate-dialog").showModal();
    }
  }

  // --- the price table -----------------------------------------------------------------

  const PRICE_FIELDS = ["input", "output", "cached_input", "cache_write", "per_request",
    "max_output"];

  function wholeNumber(text) {
    // A whole number as a JSON number; other text is sent as it is, for the API to refuse
    // with its own message. Empty: not given.
    const value = text.trim();
    if (value === "") return undefined;
    return /^-?\d+$/.test(value) ? Number(value) : value;
  }

  function priceRow(price) {
    const actions = actionsCell(price.model, [], [
      ["Edit", "price-edit", "ghost"],
      ["Remove", "price-remove", "danger"],
    ]);
    const amount = (name) => el("td", { class: "num", "data-field": name,
      text: number(price[name]) });
    return el("tr", { "data-model": price.model },
      el("td", { class: "mono name", text: price.model }),
      ...PRICE_FIELDS.map(amount),
      actions,
    );
  }

  function listLoader(name, noun, rowOf) {
    // Loads every page of /v1/<name> (prices, plans) into state[name] and its table
    // #<name>: a row per item, the empty note and the count.
    return async function load() {
      try {
        const items = await allPages(`/v1/${name}`);
        state[name] = items;
        $(`#${name} tbody`).replaceChildren(...items.map(rowOf));
        $(`#${name}-empty`).hidden = items.length > 0;
        $(`#${name}-count`).textContent = `${items.length} ${noun}${items.length === 1 ? "" : "s"}`;
      } catch (err) {
        if (err.status !== 401) say(`Could not load the ${name}: ${err.message}`, "bad");
      }
    };
  }

  function wireListView({ name, form, create, idField, reload, open, save, actions }) {
    // The buttons of a list view loaded by listLoader (prices, plans): #<name>-refresh,
    // the create button (opens the form empty), each row's data-action buttons (the
    // item of state[name] whose idField is the button's data-id) and the form's submit.
    $(`#${name}-refresh`).addEventListener("click", () => { say(""); reload(); });
    $(create).addEventListener("click", () => open(null));
    $(`#${name} tbody`).addEventListener("click", (event) => {
      const button = event.target.closest("button[data-action]");
      if (!button) return;
      const item = state[name].find((i) => i[idField] === button.dataset.id);
      const action = button.dataset.action;
      if (item && Object.hasOwn(actions, action)) actions[action](item);
    });
    $(form).addEventListener("submit", (event) => {
      event.preventDefault();
      save(event.target);
    });
  }

  const reloadPrices = listLoader("prices", "price", priceRow);

  function openPrice(price) {
    const form = blankForm("#price-form");
    const f = form.elements;
    f.model.readOnly = Boolean(price);
    f.model.value = price ? price.model : "";
    for (const name of PRICE_FIELDS) {
      f[name].value = price && price[name] !== null ? String(price[name]) : "";
    }
    $("#price-title").textContent = price ? `Price of ${price.model}` : "Set Price";
    $("#price-dialog").showModal();
    (price ? f.input : f.model).focus();
  }

  function priceBody(form) {
    const body = {};
    for (const name of PRICE_FIELDS) {
      const value = wholeNumber(form.elements[name].value);
      if (value !== undefined) body[name] = value;
    }
    return body;
  }

  async function savePrice(form) {
    const model = form.elements.model.value.trim();
    try {
      const saved = await api("PUT", `/v1/prices/${encodeURIComponent(model)}`,
        priceBody(form));
      $("#price-dialog").close();
      say(`Saved the price of ${saved.model}.`);
      await reloadPrices();
    } catch (err) {
      formError(form, err.message);
    }
  }

  async function removePrice(model) {
    const question = `Remove the price of ${model}? The models it priced fall back to a` +
      " broader pattern (gpt-4o*, *), or have no price.";
    if (!(await confirmAction(question, "Remove"))) return;
    try {
      await api("DELETE", `/v1/prices/${encodeURIComponent(model)}`);
      say(`Removed the price of ${model}.`);
      await reloadPrices();
    } catch (err) {
      if (err.status !== 401) say(`Remove ${model}: ${err.message}`, "bad");
    }
  }

  // --- plans ---------------------------------------------------------------------------

  const PLAN_FIELDS = ["quota", "cycle", "models", "rpm", "tpm", "alert_below", "payg"];

  function planRow(plan) {
    const actions = actionsCell(plan.name, [], [
      ["Edit", "plan-edit", "ghost"],
      ["Delete", "plan-delete", "danger"],
    ]);
    return el("tr", { "data-name": plan.name },
      el("td", { class: "name", text: plan.name }),
      el("td", { class: "num", text: number(plan.quota) }),
      el("td", { text: plan.cycle }),
      el("td", { text: plan.models ? plan.models.join(", ") : "all" }),
      el("td", { class: "num", text: plan.rpm ? number(plan.rpm) : "no limit" }),
      el("td", { class: "num", text: plan.tpm ? number(plan.tpm) : "no limit" }),
      el("td", { text: plan.payg ? "yes" : "no" }),
      el("td", { text: plan.alert_below || DASH }),
      el("td", { class: "num", text: number(plan.keys) }),
      el("td", { text: day(plan.created_at) }),
      actions,
    );
  }

  const reloadPlans = listLoader("plans", "plan", planRow);

  function planValues(plan) {
    return {
      quota: String(plan.quota),
      cycle: plan.cycle,
      models: plan.models ? plan.models.join(", ") : "*",
      rpm: String(plan.rpm || 0),
      tpm: String(plan.tpm || 0),
      alert_below: plan.alert_below || "",
      payg: Boolean(plan.payg),
    };
  }

  function openPlan(plan) {
    const form = blankForm("#plan-form");
    const f = form.elements;
    f.name.readOnly = Boolean(plan);
    form.initial = plan ? planValues(plan) : null;
    form.dataset.name = plan ? plan.name : "";
    if (plan) {
      f.name.value = plan.name;
      fillForm(form, PLAN_FIELDS, form.initial);
    }
    $("#plan-title").textContent = plan ? `Edit plan ${plan.name}` : "Create Plan";
    $("#plan-submit").textContent = plan ? "Save" : "Create plan";
    $("#plan-note").textContent = plan
      ? "Only the fields you change are sent. Models, rate limits and pay-as-you-go reach" +
        " the plan's keys at once; a new quota or cycle from each key's next cycle."
      : "Quota and cycle are needed; keys are put on a plan from the Keys view or the CLI.";
    $("#plan-dialog").showModal();
    (plan ? f.quota : f.name).focus();
  }

  function planBody(form) {
    const f = form.elements;
    const body = {};
    if (!form.initial) {  // a new plan: what is filled in
      body.name = f.name.value.trim();
      for (const name of ["quota", "rpm", "tpm"]) {
        const value = wholeNumber(f[name].value);
        if (value !== undefined) body[name] = value;
      }
      for (const name of ["cycle", "alert_below"]) {
        const value = f[name].value.trim();
        if (value) body[name] = value;
      }
      const models = listField(f.models.value);
      if (models.length) body.models = models;
      if (f.payg.checked) body.payg = true;
      return body;
    }
    for (const [name, value] of changedFields(form, PLAN_FIELDS)) {  // an edit
      if (name === "quota") body.quota = wholeNumber(value) ?? value;
      else if (name === "rpm" || name === "tpm") body[name] = value === "" ? 0 : wholeNumber(value);
      else if (name === "models") body.models = listField(value || "*");
      else body[name] = value;  // cycle, alert_below ("" removes it), payg
    }
    return body;
  }

  async function savePlan(form) {
    const editing = Boolean(form.initial);
    const body = planBody(form);
    if (editing && !Object.keys(body).length) return $("#plan-dialog").close();
    try {
      const plan = editing
        ? await api("PATCH", `/v1/plans/${encodeURIComponent(form.dataset.name)}`, body)
        : await api("POST", "/v1/plans", body);
      $("#plan-dialog").close();
      say(`${editing ? "Saved" : "Created"} plan ${plan.name}.`);
      await reloadPlans();
    } catch (err) {
      formError(form, err.message);
    }
  }

  async function deletePlan(plan) {
    const following = plan.keys
      ? ` ${number(plan.keys)} key(s) still follow it: move or revoke them first.`
      : " This cannot be undone.";
    if (!(await confirmAction(`Delete plan ${plan.name}?${following}`, "Delete"))) return;
    try {
      await api("DELETE", `/v1/plans/${encodeURIComponent(plan.name)}`);
      say(`Deleted plan ${plan.name}.`);
      await reloadPlans();
    } catch (err) {
      if (err.status === 401) return;
      await reloadPlans();  // its count of keys may have changed meanwhile
      say(`Delete plan ${plan.name}: ${err.message}`, "bad");
    }
  }

  // --- views ---------------------------------------------------------------------------

  const LOADERS = { keys: () => reload(), prices: reloadPrices, plans: reloadPlans };

  function currentView() {
    const name = window.location.hash.slice(1);
    return Object.hasOwn(VIEWS, name) ? name : "keys";
  }

  async function showView() {
    const view = currentView();
    for (const panel of document.querySelectorAll("section.view")) {
      panel.hidden = panel.dataset.view !== view;
    }
    for (const tab of document.querySelectorAll(".tabs a")) {
      if (tab.dataset.view === view) tab.setAttribute("aria-current", "page");
      else tab.removeAttribute("aria-current");
    }
    document.title = `${VIEWS[view]} · keyguard`;
    say("");
    await LOADERS[view]();
    document.body.dataset.view = view;
  }

  // --- actions -------------------------------------------------------------------------

  async function act(action, key) {
    const label = key.name ? `${key.name} (${key.id})` : key.id;
    try {
      if (action === "usage") return showUsage(key);
      if (action === "edit") return openEdit(key);
      if (action === "rotate") return openRotate(key);
      if (action === "topup") {
        const form = blankForm("#topup-form");
        form.dataset.id = key.id;
        $("#topup-title").textContent = `Top up ${label}`;
        return $("#topup-dialog").showModal();
      }
      const questions = {
        disable: [`Disable ${label}? Requests with it are refused (401) until it is enabled again.`, "Disable"],
        enable: [`Enable ${label}? Requests with it are accepted again.`, "Enable"],
        delete: [`Delete ${label} for good? Requests with it are refused at once, and its usage state is removed. This cannot be undone.`, "Delete"],
      };
      const [question, verb] = questions[action];
      if (!(await confirmAction(question, verb))) return;
      const path = `/v1/keys/${encodeURIComponent(key.id)}`;
      if (action === "delete") await api("DELETE", path);
      else await api("POST", `${path}/${action}`);
      say(`${verb}d ${label}.`);
      await reload();
    } catch (err) {
      if (err.status !== 401) say(`${action} ${label}: ${err.message}`, "bad");
    }
  }

  function wire() {
    for (const id of ["search", "filter-status", "filter-type", "filter-env"]) {
      $(`#${id}`).addEventListener("input", render);
    }
    $("#refresh").addEventListener("click", () => { say(""); reload(); });
    $("#keys tbody").addEventListener("click", (event) => {
      const button = event.target.closest("button[data-action]");
      if (!button) return;
      const key = state.keys.find((k) => k.id === button.dataset.id);
      if (key) act(button.dataset.action, key);
    });
    for (const button of document.querySelectorAll("[data-close]")) {
      button.addEventListener("click", () => button.closest("dialog").close());
    }

    $("#create-key").addEventListener("click", () => {
      const form = blankForm("#create-form");
      syncCycle();
      $("#create-dialog").showModal();
    });
    const syncCycle = () => {
      const sub = $("#create-form").elements.type.value === "subscription";
      $("[data-for-type=subscription]").hidden = !sub;
    };
    $("#create-form").elements.type.addEventListener("change", syncCycle);
    $("#create-form").addEventListener("submit", async (event) => {
      event.preventDefault();
      const form = event.target;
      try {
        const created = await api("POST", "/v1/keys", createBody(form));
        $("#create-dialog").close();
        form.reset();
        showCreated(created);
        say(`Created ${created.name || created.id}.`);
        reload();
      } catch (err) {
        formError(form, err.message);
      }
    });
    $("#copy-key").addEventListener("click", copyKey);
    $("#created-done").addEventListener("click", () => $("#created-dialog").close());
    $("#created-dialog").addEventListener("close", forgetCreated);

    $("#edit-form").addEventListener("submit", async (event) => {
      event.preventDefault();
      const form = event.target;
      const body = editBody(form);
      if (!Object.keys(body).length) return $("#edit-dialog").close();
      try {
        await api("PATCH", `/v1/keys/${encodeURIComponent(form.dataset.id)}`, body);
        $("#edit-dialog").close();
        say(`Saved ${form.dataset.id}.`);
        reload();
      } catch (err) {
        formError(form, err.message);
      }
    });
    $("#topup-form").addEventListener("submit", async (event) => {
      event.preventDefault();
      const form = event.target;
      try {
        const amount = Number(form.elements.amount.value);
        await api("POST", `/v1/keys/${encodeURIComponent(form.dataset.id)}/topup`, { amount });
        $("#topup-dialog").close();
        say(`Added ${number(amount)} to ${form.dataset.id}.`);
        reload();
      } catch (err) {
        formError(form, err.message);
      }
    });
    $("#rotate-form").addEventListener("submit", (event) => {
      event.preventDefault();
      rotate(event.target);
    });

    wireListView({
      name: "prices", form: "#price-form", create: "#set-price", idField: "model",
      reload: reloadPrices, open: openPrice, save: savePrice,
      actions: { "price-edit": openPrice, "price-remove": (price) => removePrice(price.model) },
    });
    wireListView({
      name: "plans", form: "#plan-form", create: "#create-plan", idField: "name",
      reload: reloadPlans, open: openPlan, save: savePlan,
      actions: { "plan-edit": openPlan, "plan-delete": deletePlan },
    });
    window.addEventListener("hashchange", showView);

    $("#usage-metric").addEventListener("change", drawUsage);
    $("#usage-close").addEventListener("click", () => {
      $("#usage").hidden = true;
      state.usageFor = null;
    });
  }

  async function start() {
    const resp = await fetch("/session", { credentials: "same-origin", cache: "no-store" });
    if (!resp.ok) {
      window.location.assign("/login");
      return;
    }
    state.session = await resp.json();
    $("#logout-csrf").value = state.session.csrf;
    $("#whoami").textContent = `${state.session.token_id} · ${state.session.role}`;
    for (const id of ["create-key", "set-price", "create-plan"]) $(`#${id}`).hidden = !isCreator();
    document.body.dataset.role = state.session.role;
    wire();
    await showView();
    document.body.dataset.ready = "1";
  }

  document.addEventListener("DOMContentLoaded", start);
})();
