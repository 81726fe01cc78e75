// What both studio pages share: $ by id, and api(), which sends JSON with the session's
// CSRF token (set from /api/me or /api/admin/state) and throws the server's error message,
// with the HTTP status as .status.
"use strict";

const $ = (id) => document.getElementById(id);
let csrf = "";

async function api(method, path, body) {
  const options = {method, headers: {}, credentials: "same-origin"};
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.headers["X-CSRF-Token"] = csrf;
    options.body = JSON.stringify(body);
  }
  const r = await fetch(path, options);
  const data = await r.json().catch(() => ({}));
  if (!r.ok) {
    const e = new Error((data.error && data.error.message) || `HTTP ${r.status}`);
    e.status = r.status;
    throw e;
  }
  return data;
}
