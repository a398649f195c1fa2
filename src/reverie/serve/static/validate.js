/* The playground's in-browser checks (no library, works offline).
 *
 * checkJson(schema, text): JSON Schema (draft 2020-12) for the subset reverie's constraints
 *   translate (docs/constraints.md): type, enum, const, properties, required,
 *   additionalProperties, propertyNames, patternProperties, min/maxProperties,
 *   dependentRequired, items, prefixItems, min/maxItems, uniqueItems, contains,
 *   min/maxContains, min/maxLength (code points), pattern (JS RegExp, a search as the spec
 *   says), minimum, maximum, exclusiveMinimum, exclusiveMaximum, multipleOf, anyOf, oneOf,
 *   allOf, not, if/then/else, local $ref ("#", "#/..."), boolean schemas, and the formats
 *   date, time, date-time, uuid, ipv4, ipv6, duration and email (email loosely:
 *   local@domain). Numbers are JavaScript doubles (exact up to 2^53). A keyword or format
 *   outside this list is reported as unchecked, never silently passed.
 * checkRegex(pattern, text): the whole text must match (a JS RegExp anchored at both ends).
 * Both return {state: "valid" | "invalid" | "unchecked", message}.
 */
(function (root) {
  "use strict";

  const ANNOTATIONS = new Set(["$schema", "$id", "$comment", "$defs", "definitions", "title",
    "description", "default", "examples", "deprecated", "readOnly", "writeOnly",
    "contentMediaType", "contentEncoding"]);
  const FORMATS = {
    date: (s) => validDate(s),
    time: (s) => /^([01]\d|2[0-3]):[0-5]\d:[0-5]\d(\.\d+)?([zZ]|[+-]([01]\d|2[0-3]):[0-5]\d)$/.test(s),
    "date-time": (s) => {
      const m = /^(.{10})[tT](.*)$/.exec(s);
      return m !== null && validDate(m[1]) && FORMATS.time(m[2]);
    },
    uuid: (s) => /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i.test(s),
    ipv4: (s) => /^((25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)$/.test(s),
    ipv6: (s) => validIpv6(s),
    duration: (s) => /^P(?!$)(\d+Y)?(\d+M)?(\d+W)?(\d+D)?(T(?=\d)(\d+H)?(\d+M)?(\d+(\.\d+)?S)?)?$/.test(s),
    email: (s) => /^[^\s@]+@[^\s@]+$/.test(s),
  };

  function validDate(s) {
    const m = /^(\d{4})-(\d{2})-(\d{2})$/.exec(s);
    if (!m) return false;
    const [y, mo, d] = [+m[1], +m[2], +m[3]];
    const days = [31, (y % 4 === 0 && y % 100 !== 0) || y % 400 === 0 ? 29 : 28, 31, 30, 31, 30,
      31, 31, 30, 31, 30, 31];
    return mo >= 1 && mo <= 12 && d >= 1 && d <= days[mo - 1];
  }

  function validIpv6(s) {
    let head = s, v4 = 0;
    const last = s.lastIndexOf(":");
    if (s.includes(".")) {  // an embedded IPv4 tail counts as two groups
      if (!FORMATS.ipv4(s.slice(last + 1))) return false;
      head = s.slice(0, last + 1) + "0";
      v4 = 1;
    }
    const halves = head.split("::");
    if (halves.length > 2) return false;
    const groups = halves.map((h) => (h === "" ? [] : h.split(":")));
    if (!groups.flat().every((g) => /^[0-9a-fA-F]{1,4}$/.test(g))) return false;
    const count = groups.flat().length + v4;
    return halves.length === 2 ? count <= 7 : count === 8;
  }

  function typeOf(v) {
    if (v === null) return "null";
    if (Array.isArray(v)) return "array";
    return typeof v;  // "object", "string", "number", "boolean"
  }

  function hasType(v, t) {
    if (t === "integer") return typeof v === "number" && Number.isInteger(v);
    return typeOf(v) === t;
  }

  function equal(a, b) {
    if (a === b) return true;
    if (typeOf(a) !== typeOf(b) || typeof a !== "object" || a === null) return false;
    if (Array.isArray(a)) return a.length === b.length && a.every((x, i) => equal(x, b[i]));
    const ka = Object.keys(a), kb = Object.keys(b);
    return ka.length === kb.length && ka.every((k) => k in b && equal(a[k], b[k]));
  }

  const show = (v) => JSON.stringify(v);
  const len = (s) => [...s].length;  // code points, as JSON Schema counts

  /** Errors of value v under schema s (at JSON pointer path); unknown keywords go to ctx. */
  function check(s, v, path, ctx) {
    if (s === true) return [];
    if (s === false) return [`${path || "/"}: no value is allowed here`];
    if (typeOf(s) !== "object") throw new Error(`a schema must be an object or a boolean, got ${show(s)} at ${path || "/"}`);
    const errs = [];
    const at = path || "/";
    for (const [k, x] of Object.entries(s)) {
      switch (k) {
        case "type": {
          const ts = Array.isArray(x) ? x : [x];
          if (!ts.some((t) => hasType(v, t))) errs.push(`${at}: expected ${ts.join(" or ")}, got ${typeOf(v)} ${show(v)}`);
          break;
        }
        case "enum": if (!x.some((e) => equal(e, v))) errs.push(`${at}: ${show(v)} is not one of ${show(x)}`); break;
        case "const": if (!equal(x, v)) errs.push(`${at}: expected ${show(x)}, got ${show(v)}`); break;
        case "$ref":
          if (++ctx.depth > 100) throw new Error("$ref recursion is too deep");
          errs.push(...check(resolve(x, ctx), v, path, ctx));
          ctx.depth--;
          break;
        case "allOf": x.forEach((sub) => errs.push(...check(sub, v, path, ctx))); break;
        case "anyOf": if (!x.some((sub) => check(sub, v, path, ctx).length === 0)) errs.push(`${at}: matches none of anyOf`); break;
        case "oneOf": {
          const n = x.filter((sub) => check(sub, v, path, ctx).length === 0).length;
          if (n !== 1) errs.push(`${at}: matches ${n} branches of oneOf, not exactly one`);
          break;
        }
        case "not": if (check(x, v, path, ctx).length === 0) errs.push(`${at}: matches the schema under not`); break;
        case "if": {
          const branch = check(x, v, path, ctx).length === 0 ? s.then : s.else;
          if (branch !== undefined) errs.push(...check(branch, v, path, ctx));
          break;
        }
        case "then": case "else": break;  // read by "if"
        // strings
        case "minLength": if (typeof v === "string" && len(v) < x) errs.push(`${at}: shorter than ${x} characters`); break;
        case "maxLength": if (typeof v === "string" && len(v) > x) errs.push(`${at}: longer than ${x} characters (${len(v)})`); break;
        case "pattern": if (typeof v === "string" && !new RegExp(x, "u").test(v)) errs.push(`${at}: ${show(v)} does not match ${x}`); break;
        case "format":
          if (typeof v !== "string") break;
          if (!(x in FORMATS)) ctx.unchecked.add(`format ${x}`);
          else if (!FORMATS[x](v)) errs.push(`${at}: ${show(v)} is not a ${x}`);
          break;
        // numbers
        case "minimum": if (typeof v === "number" && v < x) errs.push(`${at}: ${v} < minimum ${x}`); break;
        case "maximum": if (typeof v === "number" && v > x) errs.push(`${at}: ${v} > maximum ${x}`); break;
        case "exclusiveMinimum": if (typeof v === "number" && v <= x) errs.push(`${at}: ${v} <= exclusiveMinimum ${x}`); break;
        case "exclusiveMaximum": if (typeof v === "number" && v >= x) errs.push(`${at}: ${v} >= exclusiveMaximum ${x}`); break;
        case "multipleOf":
          if (typeof v === "number") {
            const q = v / x;
            if (Math.abs(q - Math.round(q)) > 1e-9 * Math.max(1, Math.abs(q))) errs.push(`${at}: ${v} is not a multiple of ${x}`);
          }
          break;
        // arrays
        case "prefixItems":
          if (Array.isArray(v)) x.forEach((sub, i) => { if (i < v.length) errs.push(...check(sub, v[i], `${path}/${i}`, ctx)); });
          break;
        case "items":
          if (Array.isArray(v)) {
            const from = Array.isArray(s.prefixItems) ? s.prefixItems.length : 0;
            for (let i = from; i < v.length; i++) errs.push(...check(x, v[i], `${path}/${i}`, ctx));
          }
          break;
        case "minItems": if (Array.isArray(v) && v.length < x) errs.push(`${at}: fewer than ${x} items`); break;
        case "maxItems": if (Array.isArray(v) && v.length > x) errs.push(`${at}: more than ${x} items`); break;
        case "uniqueItems":
          if (x && Array.isArray(v) && v.some((a, i) => v.slice(0, i).some((b) => equal(a, b)))) errs.push(`${at}: items are not unique`);
          break;
        case "contains":
          if (Array.isArray(v)) {
            const n = v.filter((item, i) => check(x, item, `${path}/${i}`, ctx).length === 0).length;
            const lo = s.minContains ?? 1, hi = s.maxContains ?? Infinity;
            if (n < lo || n > hi) errs.push(`${at}: ${n} items match contains (expected ${lo}..${hi})`);
          }
          break;
        case "minContains": case "maxContains": break;  // read by "contains"
        // objects
        case "properties":
          if (typeOf(v) === "object") for (const [p, sub] of Object.entries(x)) if (p in v) errs.push(...check(sub, v[p], `${path}/${p}`, ctx));
          break;
        case "patternProperties":
          if (typeOf(v) === "object") {
            for (const [re, sub] of Object.entries(x)) {
              for (const p of Object.keys(v)) if (new RegExp(re, "u").test(p)) errs.push(...check(sub, v[p], `${path}/${p}`, ctx));
            }
          }
          break;
        case "additionalProperties":
          if (typeOf(v) === "object") {
            const known = Object.keys(s.properties || {});
            const pats = Object.keys(s.patternProperties || {}).map((re) => new RegExp(re, "u"));
            for (const p of Object.keys(v)) {
              if (known.includes(p) || pats.some((re) => re.test(p))) continue;
              if (x === false) errs.push(`${at}: property ${show(p)} is not allowed`);
              else errs.push(...check(x, v[p], `${path}/${p}`, ctx));
            }
          }
          break;
        case "required":
          if (typeOf(v) === "object") for (const p of x) if (!(p in v)) errs.push(`${at}: missing required property ${show(p)}`);
          break;
        case "propertyNames":
          if (typeOf(v) === "object") for (const p of Object.keys(v)) errs.push(...check(x, p, `${path}/${p}`, ctx));
          break;
        case "minProperties": if (typeOf(v) === "object" && Object.keys(v).length < x) errs.push(`${at}: fewer than ${x} properties`); break;
        case "maxProperties": if (typeOf(v) === "object" && Object.keys(v).length > x) errs.push(`${at}: more than ${x} properties`); break;
        case "dependentRequired":
          if (typeOf(v) === "object") {
            for (const [p, deps] of Object.entries(x)) {
              if (p in v) for (const d of deps) if (!(d in v)) errs.push(`${at}: ${show(p)} needs ${show(d)}`);
            }
          }
          break;
        default:
          if (!ANNOTATIONS.has(k)) ctx.unchecked.add(k);
      }
    }
    return errs;
  }

  /** The subschema of a local reference ("#" or a JSON pointer "#/..."). */
  function resolve(ref, ctx) {
    if (ref !== "#" && !ref.startsWith("#/")) {
      ctx.unchecked.add(`$ref ${ref}`);
      return true;
    }
    let node = ctx.root;
    for (const raw of ref.slice(2).split("/").filter((p) => p !== "")) {
      const key = decodeURIComponent(raw).replace(/~1/g, "/").replace(/~0/g, "~");
      if (node === null || typeof node !== "object" || !(key in node)) throw new Error(`$ref ${ref} points nowhere`);
      node = node[key];
    }
    return node;
  }

  /** Check JSON text against a schema (an object, or its JSON text). */
  function checkJson(schema, text) {
    let value;
    try {
      value = JSON.parse(text);
    } catch (err) {
      return { state: "invalid", message: `not JSON: ${err.message}` };
    }
    try {
      const ctx = { root: schema, unchecked: new Set(), depth: 0 };
      const errs = check(schema, value, "", ctx);
      if (errs.length) return { state: "invalid", message: errs[0] };
      if (ctx.unchecked.size) return { state: "unchecked", message: `JSON; not checked here: ${[...ctx.unchecked].join(", ")}` };
      return { state: "valid", message: "valid under the schema" };
    } catch (err) {
      return { state: "unchecked", message: `cannot check: ${err.message}` };
    }
  }

  /** Check that the whole text matches a regular expression (JS syntax). */
  function checkRegex(pattern, text) {
    let re;
    try {
      re = new RegExp(`^(?:${pattern})$`, "u");
    } catch (err) {
      try {
        re = new RegExp(`^(?:${pattern})$`);
      } catch (err2) {
        return { state: "unchecked", message: `cannot check: not a JS regular expression (${err2.message})` };
      }
    }
    return re.test(text)
      ? { state: "valid", message: "the whole text matches" }
      : { state: "invalid", message: `does not fully match /${pattern}/` };
  }

  root.reverieCheck = { checkJson, checkRegex };
})(window);
