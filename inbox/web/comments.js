// Comment conversations (a customer's comments under one post: VK, Facebook, Instagram).
// app.js calls renderComments after it draws the messages and spreads commentReply()
// into a reply's body. Here: the post's link above the messages, a Public / Private
// switch on the composer, Hide / Unhide / Delete on each customer comment where the
// provider allows it (GET …/comments says which), and deleted / hidden marks.
// docs/channels/comments.md.

import { enc, get, post } from "./api.js";
import { fill, h } from "./dom.js";
import { lang } from "./i18n.js";

const TEXT = {
  en: {
    post: "Post",
    open_post: "open the post",
    public: "Public reply",
    private: "Private message",
    mode: "Answer",
    hide: "Hide",
    unhide: "Unhide",
    delete: "Delete",
    deleted: "deleted",
    hidden: "hidden",
    confirm_delete: "Delete this comment at the provider? Everyone stops seeing it.",
  },
  ru: {
    post: "Пост",
    open_post: "открыть пост",
    public: "Публичный ответ",
    private: "Личное сообщение",
    mode: "Ответить",
    hide: "Скрыть",
    unhide: "Показать",
    delete: "Удалить",
    deleted: "удалён",
    hidden: "скрыт",
    confirm_delete: "Удалить комментарий у провайдера? Его перестанут видеть все.",
  },
};

function tr(key) {
  return (TEXT[lang()] || TEXT.en)[key] || TEXT.en[key];
}

// The open conversation's comment thread (null: not loaded, or not a comment conversation).
const C = { convId: null, thread: null, count: -1, mode: "public", seq: 0, els: null, error: "" };

/** The reply body's extra fields: the chosen mode in a comment conversation. */
export function commentReply() {
  return C.thread && C.thread.post ? { mode: C.mode } : {};
}

/** Decorate the drawn conversation (app.js, after its messages are drawn). */
export function renderComments(convId, els, messages) {
  C.els = els;
  if (convId !== C.convId) {
    Object.assign(C, { convId, thread: null, count: -1, mode: "public", error: "" });
  }
  // Asked again on every redraw of a comment conversation (a live event redraws it: a
  // comment deleted or restored changes no message count); a direct conversation is
  // asked once more only when its messages change.
  const count = (messages || []).length;
  const isComments = Boolean(C.thread && C.thread.post);
  if (convId && (isComments || count !== C.count)) {
    C.count = count;
    load();
  }
  apply();
}

async function load() {
  const id = C.convId;
  const seq = ++C.seq;
  try {
    const thread = await get(`/api/v1/conversations/${enc(id)}/comments`);
    if (seq !== C.seq || id !== C.convId) return;
    C.thread = thread;
  } catch {
    if (seq === C.seq) C.thread = null;
  }
  apply();
}

function parts(els) {
  if (!els.commentBar) {
    els.commentBar = h("div", { class: "comment-post", "data-testid": "comment-post", hidden: true });
    els.messages.before(els.commentBar);
  }
  if (!els.commentMode) {
    const radio = (value) =>
      h(
        "label",
        { class: "check" },
        h("input", {
          type: "radio",
          name: "comment-mode",
          value,
          "data-testid": `comment-mode-${value}`,
          onchange: () => {
            C.mode = value;
          },
        }),
        " ",
        tr(value),
      );
    els.commentMode = h(
      "fieldset",
      { class: "comment-mode", "data-testid": "comment-mode", hidden: true },
      h("legend", { class: "visually-hidden" }, tr("mode")),
      radio("public"),
      radio("private"),
    );
    els.composer.querySelector(".composer-row")?.prepend(els.commentMode);
  }
  return [els.commentBar, els.commentMode];
}

function apply() {
  const els = C.els;
  if (!els || !els.messages) return;
  const [bar, modeBox] = parts(els);
  const thread = C.thread && C.thread.post ? C.thread : null;
  bar.hidden = !thread;
  modeBox.hidden = !thread;
  if (!thread) {
    fill(bar);
    return;
  }
  const p = thread.post;
  fill(
    bar,
    h("span", { class: "comment-post-label" }, tr("post"), " "),
    p.url
      ? h("a", { href: p.url, target: "_blank", rel: "noopener noreferrer", "data-testid": "comment-post-link" }, p.text || p.url)
      : h("span", {}, p.text || p.id),
    C.error ? h("span", { class: "error", role: "alert", "data-testid": "comment-error" }, " ", C.error) : null,
  );
  for (const input of modeBox.querySelectorAll("input")) input.checked = input.value === C.mode;
  for (const c of thread.comments) {
    const li = els.messages.querySelector(`li[data-id="${CSS.escape(c.message_id)}"]`);
    if (!li) continue;
    li.classList.add("msg-comment");
    li.classList.toggle("comment-deleted", c.deleted);
    li.classList.toggle("comment-hidden", c.hidden);
    li.querySelector(".comment-actions")?.remove();
    const marks = [];
    if (c.deleted) marks.push(h("span", { class: "comment-mark", "data-testid": "comment-deleted" }, tr("deleted")));
    else if (c.hidden) marks.push(h("span", { class: "comment-mark", "data-testid": "comment-hidden" }, tr("hidden")));
    const buttons = c.deleted
      ? []
      : thread.moderation
          .filter((a) => (a === "hide" ? !c.hidden : a === "unhide" ? c.hidden : true))
          .map((a) =>
            h("button", { type: "button", class: "ghost small", "data-testid": `comment-${a}`, onclick: () => moderate(c.message_id, a) }, tr(a)),
          );
    li.append(h("div", { class: "comment-actions" }, marks, buttons));
  }
}

async function moderate(messageId, action) {
  if (action === "delete" && !window.confirm(tr("confirm_delete"))) return;
  const id = C.convId;
  C.error = "";
  try {
    await post(`/api/v1/conversations/${enc(id)}/comments/${enc(messageId)}/moderate`, { action });
  } catch (err) {
    C.error = err.message;
  }
  if (id === C.convId) await load();
}
