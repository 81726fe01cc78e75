// The admin's page: projects with progress and agreement, new projects, annotators, assigning.
// Every name, prompt and number from the server is shown with textContent.
"use strict";

function cell(row, text) {
  const td = document.createElement("td");
  td.textContent = text;
  row.append(td);
  return td;
}

function option(select, value, text) {
  const o = document.createElement("option");
  o.value = value;
  o.textContent = text;
  select.append(o);
}

let refreshes = 0;  // an older reload that answers after a newer one is dropped

async function refresh() {
  const n = ++refreshes;
  const s = await api("GET", "/api/admin/state");
  if (n !== refreshes) return;
  csrf = s.csrf;
  const rows = $("projects");
  rows.replaceChildren();
  for (const p of s.projects) {
    const tr = document.createElement("tr");
    tr.dataset.project = p.name;
    cell(tr, p.name);
    cell(tr, p.kind + (p.k ? `, K=${p.k}` : ""));
    cell(tr, String(p.items));
    cell(tr, `${p.done} of ${p.assigned}`);
    cell(tr, p.annotators.map((a) => `${a.name}: ${a.done}/${a.assigned}` +
                              (a.unacceptable ? ` (${a.unacceptable} unacceptable)` : ""))
      .join(", "));
    const g = p.agreement;
    cell(tr, !g ? `${p.items_answered_twice} items answered by 2+`
      : g.annotator_pairs ? `pairwise ${g.agreement.toFixed(2)}, Kendall's tau ` +
        `${g.kendall_tau.toFixed(2)} (${g.shared_items} shared items)` : "no shared items yet");
    const exports = cell(tr, "");
    const link = document.createElement("a");
    link.href = `/api/admin/export/${p.id}`;
    link.textContent = p.kind === "rank" ? "each answer" : ".jsonl";
    link.title = "one record per answer (.jsonl)";
    exports.append(link);
    if (p.kind === "rank") {  // one record per item: the annotators' rankings by mean rank
      const merged = document.createElement("a");
      merged.href = `/api/admin/export/${p.id}?combine=mean-rank`;
      merged.textContent = "merged";
      merged.title = "one record per item, the annotators' rankings merged by mean rank (.jsonl)";
      exports.append(" · ", merged);
    }
    rows.append(tr);
  }
  const models = $("p-model");
  if (!models.options.length) for (const m of s.models) option(models, m, m);
  const projects = $("s-project");
  const chosen = projects.value;
  projects.replaceChildren();
  for (const p of s.projects) option(projects, p.name, p.name);
  if (chosen) projects.value = chosen;
  const list = $("annotators");
  list.replaceChildren();
  const boxes = $("s-annotators");
  const checked = new Set([...boxes.querySelectorAll("input:checked")].map((i) => i.value));
  boxes.querySelectorAll("label").forEach((l) => l.remove());
  for (const a of s.annotators) {
    const li = document.createElement("li");
    li.textContent = a.name;
    list.append(li);
    const label = document.createElement("label");
    label.className = "inline";
    const box = document.createElement("input");
    box.type = "checkbox";
    box.value = String(a.id);
    box.checked = checked.has(box.value);
    label.append(box, ` ${a.name}`);
    boxes.append(label);
  }
}

async function act(button, work, done) {
  $("error").hidden = true;
  button.disabled = true;
  $("status").textContent = "working…";
  try {
    const result = await work();
    $("status").textContent = done(result);
    // ready for the next one while the tables reload: with the button disabled, Enter in
    // the form did nothing (the next annotator, typed at once, was silently not added)
    button.disabled = false;
    await refresh();
  } catch (e) {
    $("status").textContent = "";
    $("error").textContent = e.message;
    $("error").hidden = false;
  } finally {
    button.disabled = false;
  }
}

$("p-kind").addEventListener("change", () => {
  $("rank-settings").hidden = $("p-kind").value !== "rank";
});
$("p-file").addEventListener("change", async () => {
  const file = $("p-file").files[0];
  if (file) $("p-prompts").value = await file.text();
});
$("project-form").addEventListener("submit", (e) => {
  e.preventDefault();
  act($("p-create"), () => api("POST", "/api/admin/projects", {
    name: $("p-name").value, kind: $("p-kind").value, prompts: $("p-prompts").value,
    model: $("p-model").value, k: Number($("p-k").value),
    max_tokens: Number($("p-max-tokens").value), temperature: Number($("p-temperature").value),
    instructions: $("p-instructions").value,
  }), (r) => `project created: ${r.items} items` +
    (r.dropped ? `, ${r.dropped} left out (fewer than 2 different replies)` : ""));
});
$("annotator-form").addEventListener("submit", (e) => {
  e.preventDefault();
  act($("a-create"), () => api("POST", "/api/admin/annotators", {name: $("a-name").value}),
    (r) => {
      $("link-name").textContent = r.name;
      $("link").value = r.link;
      $("new-link").hidden = false;
      $("a-name").value = "";
      return `annotator ${r.name} added`;
    });
});
$("assign-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const ids = [...$("s-annotators").querySelectorAll("input:checked")].map((i) => Number(i.value));
  act($("s-assign"), () => api("POST", "/api/admin/assign", {
    project: $("s-project").value, annotators: ids, per_item: Number($("s-per-item").value),
  }), (r) => `${r.added} assignments added`);
});

refresh().catch((e) => {
  $("error").textContent = e.message;
  $("error").hidden = false;
});
