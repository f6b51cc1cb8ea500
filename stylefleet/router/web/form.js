// The settings form of a style, generated from its `params` in GET /v1/styles, so a new style or
// a new param needs no change here. Each param: {name, type, default, minimum, maximum, enum,
// nullable, description}.

import { labelOf } from "./api.js";

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "text") node.textContent = value;
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  node.append(...children.filter(Boolean));
  return node;
}

function stepOf(param) {
  if (param.type === "integer") return 1;
  if (Number.isFinite(param.minimum) && Number.isFinite(param.maximum)) {
    const span = param.maximum - param.minimum;
    return span <= 10 ? 0.01 : span <= 100 ? 0.1 : 1;
  }
  return "any";
}

/** One field: returns {row, read(), reset()}; read() gives the value to send, or null for "default". */
function fieldFor(param) {
  const id = `param-${param.name}`;
  const hint = param.description ? el("small", { class: "hint", id: `${id}-hint`, text: param.description }) : null;
  const describedBy = hint ? `${id}-hint` : null;
  const label = el("label", { for: id, text: labelOf(param.name) });

  if (param.type === "boolean") {
    const input = el("input", { type: "checkbox", id, name: param.name, "aria-describedby": describedBy });
    const reset = () => { input.checked = Boolean(param.default); };
    reset();
    const row = el("div", { class: "field field-check" }, input, label, hint);
    return { row, reset, read: () => (input.checked === Boolean(param.default) ? null : String(input.checked)) };
  }

  if (Array.isArray(param.enum)) {
    const select = el("select", { id, name: param.name, "aria-describedby": describedBy },
      ...param.enum.map((v) => el("option", { value: v, text: String(v) })));
    const reset = () => { select.value = param.default ?? param.enum[0]; };
    reset();
    const row = el("div", { class: "field" }, label, select, hint);
    return { row, reset, read: () => (select.value === String(param.default) ? null : select.value) };
  }

  if (param.type === "number" || param.type === "integer") {
    const bounded = Number.isFinite(param.minimum) && Number.isFinite(param.maximum);
    const attrs = { id, name: param.name, type: "number", inputmode: param.type === "integer" ? "numeric" : "decimal",
      min: param.minimum, max: param.maximum, step: stepOf(param), "aria-describedby": describedBy,
      placeholder: param.nullable ? "default" : null };
    const number = el("input", attrs);
    // a slider beside the box for bounded numbers whose range a slider can cover (strength 0..1)
    const slider = bounded && param.type === "number"
      ? el("input", { type: "range", min: param.minimum, max: param.maximum, step: stepOf(param),
        "aria-label": `${labelOf(param.name)} slider`, tabindex: "-1" })
      : null;
    if (slider) {
      slider.addEventListener("input", () => { number.value = slider.value; });
      number.addEventListener("input", () => { if (number.value !== "") slider.value = number.value; });
    }
    const reset = () => {
      number.value = param.default ?? "";
      if (slider) slider.value = param.default ?? param.minimum;
    };
    reset();
    const control = el("div", { class: "number" }, slider, number);
    const row = el("div", { class: "field" }, label, control, hint);
    const read = () => {
      if (number.value === "" || Number(number.value) === param.default) return null;
      return number.value;
    };
    return { row, reset, read };
  }

  const input = el("input", { id, name: param.name, type: "text", autocomplete: "off", "aria-describedby": describedBy,
    placeholder: param.default === null || param.default === undefined ? "none" : String(param.default) });
  const reset = () => { input.value = ""; };
  const row = el("div", { class: "field" }, label, input, hint);
  return { row, reset, read: () => (input.value.trim() === "" ? null : input.value.trim()) };
}

/** Fills `container` with the fields of `params`; returns {values(), reset()}. */
export function buildForm(container, params) {
  const fields = params.map(fieldFor);
  container.replaceChildren(...fields.map((f) => f.row));
  return {
    /** Only the settings that differ from the defaults, so the service's defaults apply otherwise. */
    values() {
      const out = {};
      params.forEach((param, i) => {
        const value = fields[i].read();
        if (value !== null) out[param.name] = value;
      });
      return out;
    },
    reset() { fields.forEach((f) => f.reset()); },
  };
}

export { el };
