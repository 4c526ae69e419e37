// The demo page: search → pick → /recommend, and a chat box on /chat. No framework.
"use strict";
const $ = (id) => document.getElementById(id);
const chosen = new Map(); // item_id -> title
let sessionId = null;
let searchTimer = null;

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("apikey").value.trim();
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

async function call(method, path, body) {
  const res = await fetch(path, { method, headers: headers(), body: body ? JSON.stringify(body) : undefined });
  const data = await res.json().catch(() => ({}));
  if (!res.ok) {
    const d = data.detail;
    const err = new Error(Array.isArray(d) ? d.map((e) => `${e.field}: ${e.msg}`).join("; ") : d || res.statusText);
    err.status = res.status;
    throw err;
  }
  return data;
}

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text; // text only: nothing from the server is parsed as HTML
  return e;
}

function renderChips() {
  const box = $("chosen");
  box.replaceChildren();
  for (const [id, title] of chosen) {
    const c = el("span", "chip", title + " ×");
    c.title = "remove";
    c.dataset.itemId = id;
    c.onclick = () => { chosen.delete(id); renderChips(); };
    box.append(c);
  }
}

async function search() {
  const q = $("search").value.trim();
  const list = $("hits");
  if (!q) { list.replaceChildren(); return; }
  try {
    const hits = await call("GET", "/items/search?q=" + encodeURIComponent(q) + "&limit=8");
    list.replaceChildren(...hits.map((h) => {
      const li = el("li", "hit", h.title);
      li.dataset.itemId = h.item_id;
      li.onclick = () => { chosen.set(h.item_id, h.title); renderChips(); list.replaceChildren(); $("search").value = ""; };
      return li;
    }));
  } catch (e) { $("status").textContent = e.message; }
}

function card(it) {
  const li = el("li", "card");
  li.append(el("span", "score", it.score.toFixed(3)), el("h3", null, it.title));
  li.append(el("div", "genres", it.genres.join(" · ")));
  li.append(el("p", "why", it.explanation), el("div", "src", "reason: " + it.explanation_source));
  return li;
}

async function recommend() {
  $("status").textContent = "";
  const body = { history: [...chosen.keys()], k: 10 };
  const text = $("mood").value.trim();
  const goal = $("goal").value.trim();
  if (text) body.text = text;
  if (goal) body.goal = goal;
  $("go").disabled = true;
  try {
    const out = await call("POST", "/recommend", body);
    $("cards").replaceChildren(...out.items.map(card));
    const total = out.timings_ms.total ?? 0;
    $("meta").textContent = `route: ${out.route}` + (out.fallback ? ` · fallback (${out.fallback_reason})` : "") + ` · ${total.toFixed(0)} ms`;
  } catch (e) {
    $("status").textContent = e.message;
  } finally {
    $("go").disabled = false;
  }
}

function say(who, text, items) {
  const p = el("div", "msg " + who);
  p.append(el("span", null, text));
  if (items && items.length) {
    const ul = el("ul");
    for (const it of items) ul.append(el("li", null, `${it.title} — ${it.explanation}`));
    p.append(ul);
  }
  $("log").append(p);
  $("log").scrollTop = $("log").scrollHeight;
}

// A session the server no longer has (expired, or the key changed) is a 404: start anew.
async function chatTurn(msg) {
  try {
    return await call("POST", "/chat", sessionId ? { message: msg, session_id: sessionId } : { message: msg });
  } catch (e) {
    if (e.status !== 404 || !sessionId) throw e;
    sessionId = null;
    return call("POST", "/chat", { message: msg });
  }
}

async function chat(ev) {
  ev.preventDefault();
  const msg = $("say").value.trim();
  if (!msg) return;
  $("say").value = "";
  say("user", msg);
  try {
    const out = await chatTurn(msg);
    sessionId = out.session_id;
    say("bot", out.reply, out.items);
  } catch (e) { say("bot", "Error: " + e.message); }
}

$("search").addEventListener("input", () => { clearTimeout(searchTimer); searchTimer = setTimeout(search, 200); });
$("go").addEventListener("click", recommend);
$("chatform").addEventListener("submit", chat);
