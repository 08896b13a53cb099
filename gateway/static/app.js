// Web UI for the posts gateway: sign up, log in/out, see and end your sessions, read, write, edit
// and delete posts, and (for admins) ban authors. Plain browser JavaScript, no build step, same-origin JSON API.
// The list is live: GET /live (Server-Sent Events) says what changed, and the page re-reads that.
// The server decides every permission; this page only shows what it answers.
// All user-supplied text is written with textContent, never innerHTML.
"use strict";

// The access token lives in localStorage, shared by every tab of this origin, so a new tab starts
// signed in. The refresh token never reaches this script: the gateway keeps it in an HttpOnly
// cookie that only POST /auth/refresh receives (asked for with REFRESH_TRANSPORT; SECURITY.md).
const TOKEN_KEY = "access_token";
const REFRESH_TRANSPORT = { "Refresh-Token-Transport": "cookie" };
const REFRESH_AT_KEY = "refresh_at"; // ms since the epoch: 80% into the access token's life
const SIGN_OUT_REASON_KEY = "sign_out_reason"; // set when a refresh was refused, for the other tabs
const store = localStorage;
const PAGE_SIZE = 20;
const $ = (id) => document.getElementById(id);

const state = { me: null, sessions: [], posts: [], nextCursor: null, loaded: false, generation: 0, editing: null }; // editing: {id, title, body} of the open edit form
const authors = new Map(); // author_id -> Promise of {id, display_name, banned} or null
// Posts known to be deleted (by this page, or an event said so): a read that started before the
// delete may still list them, and the page must never show them again.
const gone = new Set();
const postReads = new Map(); // post_id -> number of the newest read of it, so an older answer is dropped

class ApiError extends Error {
  constructor(message, status) {
    super(message);
    this.status = status;
  }
}

// crypto.randomUUID only exists in secure contexts; fall back to getRandomValues elsewhere.
function newIdempotencyKey() {
  if (crypto.randomUUID) return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

function problemMessage(res, data) {
  let message =
    (data && typeof data.detail === "string" && data.detail) ||
    (data && typeof data.title === "string" && data.title) ||
    `Request failed (${res.status})`;
  const retryAfter = res.status === 429 ? res.headers.get("Retry-After") : null;
  if (retryAfter) {
    message += /^\d+$/.test(retryAfter.trim())
      ? ` Try again in ${retryAfter.trim()} seconds.`
      : ` Try again after ${retryAfter}.`;
  }
  return message;
}

// One JSON request. Resolves with the parsed body (null for 204); throws ApiError otherwise.
// Every authorized call goes through here, so this is the one place that renews the session: an
// access token refused as expired is refreshed (once) and the request sent again.
async function api(method, path, { body, auth = false, idempotent = false, extraHeaders = {} } = {}) {
  const headers = { Accept: "application/json, application/problem+json", ...extraHeaders };
  if (idempotent) headers["Idempotency-Key"] = newIdempotencyKey(); // the same key on the retry
  if (body !== undefined) headers["Content-Type"] = "application/json";
  for (let attempt = 0; ; attempt++) {
    const token = store.getItem(TOKEN_KEY);
    if (auth && token) headers.Authorization = `Bearer ${token}`;
    const res = await send(method, path, headers, body);
    const data = res.status === 204 ? null : await res.json().catch(() => null);
    if (res.ok) return data;
    const error = new ApiError(problemMessage(res, data), res.status);
    if (res.status === 401 && auth && token) {
      const expired = /expired/.test(res.headers.get("WWW-Authenticate") || "");
      if (expired && attempt === 0 && (await refreshTokens(token))) continue;
      signOutLocally();
      const reason = store.getItem(SIGN_OUT_REASON_KEY); // why the refresh was refused, if it was
      if (reason) throw new ApiError(reason, 401);
    }
    throw error;
  }
}

async function send(method, path, headers, body) {
  try {
    return await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
    });
  } catch {
    throw new ApiError("Cannot reach the server", 0);
  }
}

// ---- keeping the session alive ----

function saveTokens(result) {
  store.removeItem(SIGN_OUT_REASON_KEY);
  store.setItem(REFRESH_AT_KEY, String(Date.now() + result.expires_in * 800));
  store.setItem(TOKEN_KEY, result.access_token); // last: the other tabs listen for this key
  scheduleRefresh();
}

function clearTokens() {
  for (const key of [REFRESH_AT_KEY, TOKEN_KEY]) store.removeItem(key);
}

let refreshTimer = null;
store.removeItem("refresh_token"); // an older version of this page kept it here; it no longer may

// Renews the pair 80% into the access token's life, so a request rarely meets an expired token.
function scheduleRefresh() {
  clearTimeout(refreshTimer);
  const at = Number(store.getItem(REFRESH_AT_KEY));
  if (!at || !store.getItem(TOKEN_KEY)) return;
  refreshTimer = setTimeout(() => refreshTokens(store.getItem(TOKEN_KEY)), Math.max(0, at - Date.now()));
}

// Trades the refresh cookie for a new pair; true when a newer access token than `stale` is stored.
// The Web Lock lets one tab refresh at a time, and the browser sends each request the cookie as
// the request before it left it, so two tabs never present one refresh token twice (which would
// look like theft once REFRESH_REUSE_GRACE_SECONDS are past). A tab that waited and already sees
// a newer access token uses it. A refusal (reused, expired, ended, banned) ends the session in
// every tab, with the reason.
async function refreshTokens(stale) {
  const work = async () => {
    const current = store.getItem(TOKEN_KEY);
    if (current !== stale) return current !== null;
    if (!current) return false; // signed out
    let res;
    try {
      res = await fetch("/auth/refresh", {
        method: "POST",
        headers: { Accept: "application/json, application/problem+json", ...REFRESH_TRANSPORT },
        credentials: "same-origin",
        cache: "no-store",
      });
    } catch {
      return false; // offline: the next request or timer tries again
    }
    const data = await res.json().catch(() => null);
    if (res.ok) {
      saveTokens(data);
      return true;
    }
    if (res.status === 401 || res.status === 403) {
      store.setItem(SIGN_OUT_REASON_KEY, problemMessage(res, data));
      signOutLocally();
      showAlert(problemMessage(res, data));
    } else {
      // 429 or 503: keep the session, try again shortly.
      clearTimeout(refreshTimer);
      refreshTimer = setTimeout(() => refreshTokens(store.getItem(TOKEN_KEY)), 5000);
    }
    return false;
  };
  return navigator.locks ? navigator.locks.request("refresh-token", work) : work();
}

// Another tab renewed the pair, signed in, or signed out: follow it.
window.addEventListener("storage", (event) => {
  if (event.storageArea !== store || (event.key !== TOKEN_KEY && event.key !== null)) return;
  if (store.getItem(TOKEN_KEY)) {
    scheduleRefresh();
    if (!state.me) loadMe().catch(() => {});
  } else if (state.me) {
    const reason = store.getItem(SIGN_OUT_REASON_KEY);
    signOutLocally();
    if (reason) showAlert(reason);
  }
});

// ---- alert and notice regions ----

function showAlert(message) {
  $("alert").textContent = message;
  $("alert").hidden = false;
}

function clearAlert() {
  $("alert").textContent = "";
  $("alert").hidden = true;
}

function setNotice(message) {
  $("notice").textContent = message;
  $("notice").hidden = !message;
}

// Runs one user action: the alert shows its failure, or is cleared on success.
async function run(button, action) {
  if (button) button.disabled = true;
  setNotice("");
  try {
    await action();
    clearAlert();
  } catch (err) {
    if (!(err instanceof ApiError)) console.error(err);
    showAlert(err instanceof ApiError ? err.message : "Something went wrong");
    // A 403 may mean this account was just banned: ask again, and a banned account is signed out.
    if (err.status === 403 && state.me) loadMe().catch(() => {});
  } finally {
    if (button) button.disabled = false;
  }
}

// ---- session ----

function signOutLocally() {
  clearTokens();
  clearTimeout(refreshTimer);
  state.me = null;
  state.sessions = [];
  state.editing = null;
  authors.clear(); // re-read the authors too (a ban may be why we are signed out)
  renderSession();
  renderPosts();
}

function renderSession() {
  const me = state.me;
  $("session-status").textContent = me ? `Signed in as ${me.display_name} (${me.role})` : "Not signed in";
  $("logout-button").hidden = !me;
  $("auth-forms").hidden = Boolean(me);
  $("write-section").hidden = !me;
  $("sessions-section").hidden = !me;
  renderSessions();
}

async function loadMe() {
  try {
    state.me = await api("GET", "/auth/me", { auth: true });
  } catch (err) {
    if (err.status === 403) signOutLocally(); // banned: the token is of no use
    throw err;
  }
  renderSession();
  renderPosts();
  await loadSessions();
}

// ---- the caller's sessions ----

function renderSessions() {
  $("sessions").replaceChildren(...(state.me ? state.sessions : []).map(renderSessionItem));
}

function renderSessionItem(session) {
  const item = el("li", { class: "session-item", "data-testid": "session", "data-session-id": session.id });
  const labelId = `session-${session.id}`;
  const label = el("p", { id: labelId, class: "session-agent", "data-testid": "session-agent" }, session.user_agent || "Unknown device");
  if (session.current) label.append(" ", el("strong", { class: "session-current", "data-testid": "session-current" }, "(this device)"));
  const meta = el("p", { class: "session-meta" });
  meta.append(
    el("span", { "data-testid": "session-address" }, session.address || "unknown address"),
    " · started ",
    el("time", { datetime: session.created_at, "data-testid": "session-created" }, formatTime(session.created_at)),
    " · last used ",
    el("time", { datetime: session.last_used_at, "data-testid": "session-last-used" }, formatTime(session.last_used_at))
  );
  const end = el("button", { type: "button", class: "end-session", "data-testid": "end-session", "aria-describedby": labelId }, "End");
  end.addEventListener("click", () => run(end, () => endSession(session)));
  item.append(label, meta, end);
  return item;
}

async function loadSessions() {
  state.sessions = (await api("GET", "/auth/sessions", { auth: true })).items;
  renderSessions();
}

async function endSession(session) {
  await api("DELETE", `/auth/sessions/${encodeURIComponent(session.id)}`, { auth: true, idempotent: true });
  if (session.current) {
    signOutLocally(); // ending this device's session is a logout
    setNotice("You ended this session and are signed out.");
    return;
  }
  setNotice("Session ended.");
  await loadSessions();
}

// ---- posts ----

function el(tag, attrs = {}, text) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

function getAuthor(id) {
  if (!authors.has(id)) {
    authors.set(id, api("GET", `/users/${encodeURIComponent(id)}`).catch(() => null));
  }
  return authors.get(id);
}

function formatTime(iso) {
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? String(iso) : date.toLocaleString();
}

function renderPost(post) {
  const item = el("li", { class: "post", "data-testid": "post", "data-post-id": post.id });
  const titleId = `title-${post.id}`;
  item.append(el("h3", { id: titleId, class: "post-title", "data-testid": "post-title" }, post.title));
  const me = state.me;
  if (me && state.editing && state.editing.id === post.id) {
    item.append(renderEditForm(post, titleId));
    return item;
  }

  const meta = el("p", { class: "post-meta" }, "by ");
  const author = el("span", { class: "post-author", "data-testid": "post-author", "data-author-id": post.author_id }, "…");
  getAuthor(post.author_id).then((user) => {
    if (!user) {
      author.textContent = "unknown author";
      return;
    }
    author.textContent = user.banned ? `${user.display_name} (banned)` : user.display_name;
    author.dataset.banned = String(Boolean(user.banned));
  });
  meta.append(author);

  if (me && me.role === "admin" && post.author_id !== me.id) {
    const ban = el("button", { type: "button", class: "ban-author", "data-testid": "ban-author", "data-author-id": post.author_id, "aria-describedby": titleId }, "Ban author");
    ban.addEventListener("click", () => run(ban, () => banAuthor(post.author_id)));
    meta.append(" ", ban);
  }
  meta.append(" · ", el("time", { datetime: post.created_at, "data-testid": "post-created" }, formatTime(post.created_at)));
  item.append(meta, el("p", { class: "post-body", "data-testid": "post-body" }, post.body));

  if (me) {
    // Offered to everyone signed in: the server decides (only the author may edit; the author or
    // an admin may delete), and a refusal is shown in the alert.
    const edit = el("button", { type: "button", class: "edit-post", "data-testid": "edit-post", "aria-describedby": titleId }, "Edit");
    edit.addEventListener("click", () => {
      clearAlert();
      state.editing = { id: post.id, title: post.title, body: post.body };
      renderPosts();
      const title = $(`edit-title-${post.id}`);
      if (title) title.focus();
    });
    const del = el("button", { type: "button", class: "delete-post", "data-testid": "delete-post", "aria-describedby": titleId }, "Delete");
    del.addEventListener("click", () => run(del, () => deletePost(post.id)));
    const actions = el("div", { class: "post-actions" });
    actions.append(edit, " ", del);
    item.append(actions);
  }
  return item;
}

// The inline form that edits one post. What is typed lives in state.editing, so a re-render (a
// refusal re-reads the session) keeps it, and the form stays open with the alert.
function renderEditForm(post, titleId) {
  const draft = state.editing;
  const form = el("form", { class: "edit-post-form", "data-testid": "edit-post-form", "aria-labelledby": titleId, novalidate: "" });
  const titleInput = el("input", { id: `edit-title-${post.id}`, "data-testid": "edit-post-title", type: "text", required: "" });
  titleInput.value = draft.title;
  titleInput.addEventListener("input", () => { draft.title = titleInput.value; });
  const bodyInput = el("textarea", { id: `edit-body-${post.id}`, "data-testid": "edit-post-body", rows: "4", required: "" });
  bodyInput.value = draft.body;
  bodyInput.addEventListener("input", () => { draft.body = bodyInput.value; });
  const save = el("button", { type: "submit", "data-testid": "edit-post-save" }, "Save");
  const cancel = el("button", { type: "button", "data-testid": "edit-post-cancel" }, "Cancel");
  cancel.addEventListener("click", () => {
    state.editing = null;
    renderPosts();
  });
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    run(save, () => editPost(post, titleInput.value, bodyInput.value));
  });
  const buttons = el("div", { class: "form-buttons" });
  buttons.append(save, cancel);
  form.append(el("label", { for: titleInput.id }, "Title"), titleInput, el("label", { for: bodyInput.id }, "Body"), bodyInput, buttons);
  return form;
}

function renderPosts() {
  // Live events re-render the list while someone may be typing in an edit form: keep their place.
  const active = document.activeElement;
  const focused = active && active.id && $("posts").contains(active) ? { id: active.id, start: active.selectionStart, end: active.selectionEnd } : null;
  $("posts").replaceChildren(...state.posts.map(renderPost));
  $("posts-empty").hidden = !state.loaded || state.posts.length > 0;
  $("load-more").hidden = !state.nextCursor;
  const again = focused && $(focused.id);
  if (again) {
    again.focus();
    if (typeof focused.start === "number") again.setSelectionRange(focused.start, focused.end);
  }
}

async function refreshPosts() {
  const generation = ++state.generation;
  authors.clear(); // pick up bans and renames
  $("posts").setAttribute("aria-busy", "true");
  try {
    const page = await api("GET", `/posts?limit=${PAGE_SIZE}`);
    if (generation !== state.generation) return; // a newer refresh won
    state.posts = page.items.filter((p) => !gone.has(p.id));
    state.nextCursor = page.next_cursor;
    state.loaded = true;
    renderPosts();
  } finally {
    if (generation === state.generation) $("posts").setAttribute("aria-busy", "false");
  }
}

async function loadMore() {
  if (!state.nextCursor) return;
  const generation = state.generation;
  const page = await api("GET", `/posts?limit=${PAGE_SIZE}&cursor=${encodeURIComponent(state.nextCursor)}`);
  if (generation !== state.generation) return;
  const seen = new Set(state.posts.map((p) => p.id));
  state.posts.push(...page.items.filter((p) => !seen.has(p.id) && !gone.has(p.id)));
  state.nextCursor = page.next_cursor;
  renderPosts();
}

async function editPost(post, title, body) {
  const changes = {};
  if (title !== post.title) changes.title = title;
  if (body !== post.body) changes.body = body;
  if (Object.keys(changes).length > 0) {
    // The answer is the post as it now is: show exactly that.
    const updated = await api("PATCH", `/posts/${encodeURIComponent(post.id)}`, { auth: true, idempotent: true, body: changes });
    postReads.set(updated.id, (postReads.get(updated.id) || 0) + 1); // a read already under way is older
    state.posts = state.posts.map((p) => (p.id === updated.id ? updated : p));
    setNotice("Post updated.");
  }
  state.editing = null;
  renderPosts();
}

async function deletePost(id) {
  await api("DELETE", `/posts/${encodeURIComponent(id)}`, { auth: true, idempotent: true });
  forgetPost(id); // at once, on the 204: the event and any re-read come later
  setNotice("Post deleted.");
}

async function banAuthor(userId) {
  const user = await api("POST", `/users/${encodeURIComponent(userId)}/ban`, { auth: true, idempotent: true, body: {} });
  setNotice(`${user.display_name} is banned.`);
  await refreshPosts();
}

// ---- live updates (GET /live) ----

function forgetPost(id) {
  gone.add(id);
  if (state.editing && state.editing.id === id) state.editing = null;
  const before = state.posts.length;
  state.posts = state.posts.filter((p) => p.id !== id);
  if (state.posts.length !== before) renderPosts();
}

// Reads one post again and puts it where it belongs: replaced in place, or (created) inserted by
// date among the loaded ones. An answer older than a later read, or about a deleted post, is dropped.
async function rereadPost(id, { created = false } = {}) {
  const read = (postReads.get(id) || 0) + 1;
  postReads.set(id, read);
  let post;
  try {
    post = await api("GET", `/posts/${encodeURIComponent(id)}`);
  } catch (err) {
    if (err.status === 404) forgetPost(id);
    return;
  }
  if (postReads.get(id) !== read || gone.has(id)) return;
  const at = state.posts.findIndex((p) => p.id === id);
  if (at >= 0) {
    state.posts[at] = post;
  } else if (created) {
    const later = state.posts.findIndex((p) => p.created_at < post.created_at);
    if (later >= 0) state.posts.splice(later, 0, post);
    else if (!state.nextCursor) state.posts.push(post); // older than all loaded: "Load more" brings it
    else return;
  } else {
    return; // not on this page
  }
  state.loaded = true;
  renderPosts();
}

// An account was banned: its name is read again, and shows "(banned)". A viewer who is that
// account asks the server who they are at once: its 403 signs them out, and the alert says why.
// The event only prompts the question; the server's answer is what signs anyone out.
function authorBanned(userId) {
  authors.delete(userId);
  renderPosts();
  if (state.me && state.me.id === userId) {
    loadMe().catch((err) => {
      if (err instanceof ApiError) showAlert(err.message);
    });
  }
}

// Events may have been missed (the server lost its feed, or we were away too long): read it all again.
function reloadEverything() {
  refreshPosts().catch(() => {});
  if (state.me) loadMe().catch(() => {});
}

const LIVE_HANDLERS = {
  "post.created": (data) => rereadPost(data.post_id, { created: true }),
  "post.edited": (data) => rereadPost(data.post_id),
  "post.deleted": (data) => forgetPost(data.post_id),
  "user.banned": (data) => authorBanned(data.user_id),
  reload: () => reloadEverything(),
};

// EventSource reconnects by itself, with Last-Event-ID: the server replays what was missed, or
// sends `reload` when it cannot.
function connectLive() {
  if (!window.EventSource) return; // the page still works; it just is not live
  const source = new EventSource("/live");
  for (const name of Object.keys(LIVE_HANDLERS)) {
    source.addEventListener(name, (event) => {
      let data;
      try {
        data = JSON.parse(event.data);
      } catch {
        return;
      }
      Promise.resolve(LIVE_HANDLERS[name](data)).catch((err) => console.error(err));
    });
  }
  document.body.dataset.live = "connecting";
  source.addEventListener("open", () => { document.body.dataset.live = "open"; });
  source.addEventListener("error", () => { document.body.dataset.live = "reconnecting"; });
}

// ---- forms and buttons ----

function onSubmit(formId, action) {
  const form = $(formId);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    run(form.querySelector("button[type=submit]"), () => action(form));
  });
}

onSubmit("signup-form", async (form) => {
  const user = await api("POST", "/auth/register", {
    body: {
      email: $("signup-email").value.trim(),
      display_name: $("signup-display-name").value.trim(),
      password: $("signup-password").value,
    },
  });
  form.reset();
  $("login-email").value = user.email;
  setNotice(`Account created for ${user.email}. You can log in now.`);
});

onSubmit("login-form", async (form) => {
  const result = await api("POST", "/auth/login", {
    body: { email: $("login-email").value.trim(), password: $("login-password").value },
    extraHeaders: REFRESH_TRANSPORT,
  });
  saveTokens(result);
  try {
    await loadMe();
  } catch (err) {
    signOutLocally(); // never keep a token we could not confirm
    throw err;
  }
  form.reset();
});

onSubmit("new-post-form", async (form) => {
  await api("POST", "/posts", {
    auth: true,
    idempotent: true,
    body: { title: $("new-post-title").value, body: $("new-post-body").value },
  });
  form.reset();
  setNotice("Post published.");
  await refreshPosts();
});

$("logout-button").addEventListener("click", (event) =>
  run(event.currentTarget, async () => {
    try {
      await api("POST", "/auth/logout", { auth: true });
    } finally {
      signOutLocally();
    }
  })
);

$("load-more").addEventListener("click", (event) => run(event.currentTarget, loadMore));
$("reload-sessions").addEventListener("click", (event) => run(event.currentTarget, loadSessions));

// ---- start ----

renderSession();
renderPosts();
connectLive(); // before the first read: nothing committed after that read can be missed
run(null, async () => {
  let sessionError = null;
  if (store.getItem(TOKEN_KEY)) {
    scheduleRefresh();
    try {
      await loadMe();
    } catch (err) {
      sessionError = err;
    }
  }
  await refreshPosts();
  if (sessionError) throw sessionError;
});
