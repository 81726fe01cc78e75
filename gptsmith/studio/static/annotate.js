// The annotator's pages: the queue (/queue) and one item (/item/ID).
// Every prompt and response is put on the page with textContent, never as HTML.
// What is typed is kept as a draft in localStorage at once and on the server shortly after,
// so a reload, a crash or another browser loses nothing.
"use strict";

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

function randomId() {  // crypto.randomUUID needs a secure context; this does not
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function showProgress(q) {
  $("progress").textContent = `${q.done} of ${q.total} done`;
}

// -- the queue -----------------------------------------------------------------------------

function showQueue(q) {
  $("queue-view").hidden = false;
  const allDone = q.total > 0 && q.done === q.total;
  $("queue-summary").textContent = q.total === 0 ? "Nothing is assigned to you yet."
    : allDone ? `All ${q.total} done. Thank you!` : `${q.done} of ${q.total} done.`;
  $("queue-hint-todo").hidden = allDone || q.total === 0;
  $("queue-hint-done").hidden = !allDone;
  const list = $("queue");
  list.replaceChildren();
  for (const a of q.assignments) {
    const li = document.createElement("li");
    li.className = a.done ? "done" : "todo";
    const link = document.createElement("a");
    link.href = `/item/${a.id}`;
    link.textContent = `${a.project} #${a.position + 1} (${a.kind}): ${a.prompt}`;
    li.append(link);
    list.append(li);
  }
  const next = list.querySelector("li.todo a");
  if (next) next.focus();
}

// -- one item ------------------------------------------------------------------------------

let item = null;      // the assignment from the server
let state = null;     // {response, ranking, unacceptable, comment, submission_id}
let saveTimer = null;
let submitting = false;
const draftKey = () => `studio-draft-${item.id}`;

function restoreDraft() {
  let local = null;
  try { local = JSON.parse(localStorage.getItem(draftKey())); } catch (e) { local = null; }
  let server = null;
  if (item.draft) {
    try { server = JSON.parse(item.draft.body); } catch (e) { server = null; }
  }
  // the newer of the two wins (server time is in seconds, ours in milliseconds)
  if (server && (!local || item.draft.updated * 1000 > (local.saved || 0))) local = server;
  state = Object.assign({response: "", ranking: [], unacceptable: false, comment: "",
                         submission_id: randomId()}, local || {});
  const k = (item.responses || []).length;
  state.ranking = (state.ranking || []).filter((i, n, all) => i >= 0 && i < k
                                                 && all.indexOf(i) === n);
}

function changed() {
  state.saved = Date.now();
  localStorage.setItem(draftKey(), JSON.stringify(state));
  $("status").textContent = "draft kept in this browser";
  clearTimeout(saveTimer);
  saveTimer = setTimeout(saveToServer, 600);
}

async function saveToServer() {
  try {
    await api("PUT", `/api/assignments/${item.id}/draft`, {body: JSON.stringify(state)});
    if (!submitting) $("status").textContent = "draft saved";
  } catch (e) {
    $("status").textContent = `draft kept in this browser only (${e.message})`;
  }
}

const ORDINALS = ["1st", "2nd", "3rd", "4th", "5th", "6th", "7th", "8th", "9th"];

// Each response is named by its number (the key that picks it) and says where it was ranked
// in words, so a response's number is never mistaken for its place.
function renderRanking() {
  const k = item.responses.length;
  document.body.classList.toggle("unacceptable", state.unacceptable);
  $("unacceptable").checked = state.unacceptable;
  for (const li of $("responses").children) {
    const i = Number(li.dataset.index);
    const place = state.ranking.indexOf(i);
    if (place >= 0) li.dataset.place = String(place + 1);
    else delete li.dataset.place;
    li.querySelector(".place").textContent = place < 0 ? "" : `· ranked ${ORDINALS[place]} of ` +
      `${k}` + (place === 0 ? " (best)" : place === k - 1 ? " (worst)" : "");
  }
  $("order").textContent = state.unacceptable ? "all unacceptable"
    : state.ranking.length ? state.ranking.map((i) => `response ${i + 1}`).join(" > ")
    : "none yet";
}

function showAnswer(a) {
  $("answer-view").hidden = false;
  for (const id of ["demonstrate", "rank"]) $(id).hidden = id !== item.kind;
  $("response").readOnly = $("comment").readOnly = $("unacceptable").disabled = true;
  $("submit").hidden = $("rank-hint").hidden = true;
  let text = a.response || "";
  if (item.kind === "rank") {
    text = a.unacceptable ? "All unacceptable."
      : "Best first: " + a.ranking.map((i) => `response ${i + 1}`).join(" > ");
    state = {ranking: a.ranking || [], unacceptable: a.unacceptable};
    renderRanking();
  } else {
    $("response").value = a.response;
  }
  $("comment").value = a.comment || "";
  $("answer").textContent = text + (a.comment ? `\nComment: ${a.comment}` : "");
  $("next").focus();
}

async function showItem(id) {
  item = await api("GET", `/api/assignments/${id}`);
  $("item-view").hidden = false;
  $("item-meta").textContent = `${item.project}, item ${item.position + 1} (${item.kind})`;
  $("instructions").textContent = item.instructions || "";
  $("instructions").hidden = !item.instructions;
  $("prompt").textContent = item.prompt;
  if (item.kind === "rank") {
    $("kmax").textContent = String(item.responses.length);
    const list = $("responses");
    item.responses.forEach((text, i) => {
      const li = document.createElement("li");
      li.dataset.index = String(i);
      const key = document.createElement("span");
      key.className = "key";
      key.title = `press ${i + 1} to pick this response`;
      key.append(document.createElement("kbd"));
      key.firstChild.textContent = `${i + 1}`;
      const label = document.createElement("div");
      label.className = "label";
      const place = document.createElement("span");
      place.className = "place";
      label.append(`Response ${i + 1} `, place);
      const body = document.createElement("div");
      body.className = "text";
      body.textContent = text;
      const column = document.createElement("div");
      column.append(label, body);
      li.append(key, column);
      list.append(li);
    });
  }
  if (item.answer) return showAnswer(item.answer);
  restoreDraft();
  $(item.kind).hidden = false;
  $("comment").value = state.comment;
  if (item.kind === "demonstrate") {
    $("response").value = state.response;
    $("response").focus();
    $("response").setSelectionRange(state.response.length, state.response.length);
  } else {
    renderRanking();
    document.activeElement.blur();
  }
}

function pick(i) {
  if (state.unacceptable || i >= item.responses.length || state.ranking.includes(i)) return;
  state.ranking.push(i);
  if (state.ranking.length === item.responses.length - 1) {  // the last one is implied
    state.ranking.push([...item.responses.keys()].find((j) => !state.ranking.includes(j)));
  }
  renderRanking();
  changed();
}

async function submit() {
  if (submitting || !item || item.answer) return;
  const answer = {submission_id: state.submission_id, comment: state.comment};
  if (item.kind === "demonstrate") {
    if (!state.response.trim()) return showError("Write a response first.");
    answer.response = state.response;
  } else if (state.unacceptable) {
    answer.unacceptable = true;
  } else if (state.ranking.length !== item.responses.length) {
    return showError(`Rank all ${item.responses.length} responses (number keys), or mark them ` +
                     "all unacceptable (U).");
  } else {
    answer.ranking = state.ranking;
  }
  submitting = true;
  $("submit").disabled = true;
  $("status").textContent = "submitting…";
  clearTimeout(saveTimer);
  try {
    await api("POST", `/api/assignments/${item.id}/answer`, answer);
  } catch (e) {
    submitting = false;
    $("submit").disabled = false;
    $("status").textContent = "";
    // a retry sends the same submission id, so it can never be stored twice
    return showError(`Not submitted: ${e.message}. Your text is kept; try again.`);
  }
  localStorage.removeItem(draftKey());
  showError("");
  const q = await api("GET", "/api/queue");
  const next = q.assignments.find((a) => !a.done);
  location.assign(next ? `/item/${next.id}` : "/queue");
}

function editing(target) {
  return target instanceof HTMLTextAreaElement || target instanceof HTMLInputElement
    && target.type !== "checkbox";
}

document.addEventListener("keydown", (e) => {
  if (!item || item.answer) return;
  if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
    e.preventDefault();
    submit();
    return;
  }
  if (e.key === "Escape" && editing(e.target)) {
    e.target.blur();
    return;
  }
  if (editing(e.target) || e.ctrlKey || e.metaKey || e.altKey) return;
  if (e.key === "c" || e.key === "C") {
    e.preventDefault();
    $("comment").focus();
  } else if (item.kind !== "rank") {
    return;
  } else if (/^[1-9]$/.test(e.key)) {
    e.preventDefault();
    pick(Number(e.key) - 1);
  } else if (e.key === "Backspace") {
    e.preventDefault();
    if (state.ranking.length === item.responses.length) state.ranking.pop();  // the implied one
    state.ranking.pop();
    renderRanking();
    changed();
  } else if (e.key === "u" || e.key === "U") {
    e.preventDefault();
    state.unacceptable = !state.unacceptable;
    renderRanking();
    changed();
  }
});

$("response").addEventListener("input", () => { state.response = $("response").value; changed(); });
$("comment").addEventListener("input", () => { state.comment = $("comment").value; changed(); });
$("unacceptable").addEventListener("change", () => {
  state.unacceptable = $("unacceptable").checked;
  renderRanking();
  changed();
});
$("submit").addEventListener("click", submit);
$("responses").addEventListener("click", (e) => {
  const li = e.target.closest("li");
  if (li && item && !item.answer) pick(Number(li.dataset.index));
});

(async function start() {
  try {
    const me = await api("GET", "/api/me");
    csrf = me.csrf;
    $("who").textContent = me.name;
    const q = await api("GET", "/api/queue");
    showProgress(q);
    const m = location.pathname.match(/^\/item\/(\d+)$/);
    if (m) await showItem(Number(m[1]));
    else showQueue(q);
  } catch (e) {
    showError(e.status === 401 ? "Sign in with your personal link." : e.message);
  }
})();
