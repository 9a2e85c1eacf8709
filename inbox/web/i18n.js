// UI strings, Russian and English. t("key", {name: value}) fills {name} placeholders.
// The language: the one chosen on the page (localStorage), else navigator.language.

const STRINGS = {
  en: {
    title: "Inbox",
    login_title: "Sign in to the inbox",
    login_hint: "Paste your API token (ask an admin, or run: omniroute tokens issue --user ID).",
    token: "API token",
    sign_in: "Sign in",
    sign_out: "Sign out",
    bad_token: "This token is unknown, revoked or its user is inactive.",
    no_access: "This user has no access to the CRM.",
    session_expired: "The session ended: sign in again.",
    network_error: "The service does not answer. Retrying…",
    language: "Language",
    live: "live",
    offline: "reconnecting…",
    filter_mine: "Mine",
    filter_unassigned: "Unassigned",
    filter_all: "All",
    status_any: "Any status",
    status_open: "Open",
    status_snoozed: "Snoozed",
    status_closed: "Closed",
    conv_open: "Open",
    conv_snoozed: "Snoozed",
    conv_closed: "Closed",
    search: "Search",
    no_conversations: "No conversations here.",
    load_more: "Load more",
    load_older: "Earlier messages",
    unknown_contact: "Unknown contact",
    unread: "{n} unread",
    pick_conversation: "Pick a conversation on the left.",
    back: "Back",
    crm: "CRM",
    to_conversation: "Conversation",
    assignee: "Assignee",
    nobody: "nobody",
    take: "Take",
    assign: "Assign",
    assign_to: "Assign to…",
    unassign: "Unassign",
    close: "Close",
    reopen: "Reopen",
    snooze: "Snooze…",
    snooze_1h: "for 1 hour",
    snooze_3h: "for 3 hours",
    snooze_tomorrow: "until tomorrow 9:00",
    snooze_week: "for a week",
    snoozed_until: "snoozed until {at}",
    dir_in: "inbound",
    dir_out: "outbound",
    dir_note: "internal note",
    note_label: "Note",
    automatic: "automatic",
    state_queued: "queued",
    state_sent: "sent",
    state_delivered: "delivered",
    state_read: "read",
    state_failed: "failed",
    edited: "edited",
    call: "Call",
    call_missed: "Missed call",
    call_duration: "{d}",
    recording: "Recording",
    attachment: "Attachment",
    reply_placeholder: "Write a reply… (Ctrl+Enter sends)",
    note_placeholder: "Internal note for colleagues… (Ctrl+Enter saves)",
    as_note: "Internal note",
    attach: "Attach file",
    remove: "Remove",
    send: "Send",
    save_note: "Save note",
    uploading: "uploading…",
    contact: "Contact",
    phones: "Phones",
    emails: "E-mail",
    lead: "Lead",
    deal: "Deal",
    pipeline: "Pipeline",
    stage: "Stage",
    move_stage: "Move",
    moved: "Moved to “{stage}”.",
    closed_entity: "closed",
    fields: "Fields",
    required_for: "required for “{stage}”",
    required_missing: "Fill this in to enter “{stage}”.",
    save_fields: "Save fields",
    saved: "Saved.",
    no_fields: "No fields yet.",
    add_field: "Add field",
    field_name: "field name",
    convert: "Convert to deal",
    converted: "Converted: the conversation now belongs to the deal.",
    tasks: "Tasks",
    my_tasks: "My open tasks",
    no_tasks: "No tasks.",
    deadline: "due {at}",
    task_done: "done",
    nothing_linked: "No lead or deal.",
    notification: "Notification",
    error: "Error",
    conflict: "Someone changed this meanwhile; it is shown as it is now.",
    channel_api: "Site / API",
    channel_email: "E-mail",
    channel_telegram: "Telegram",
    channel_whatsapp: "WhatsApp",
    channel_viber: "Viber",
    channel_vk: "VK",
    channel_avito: "Avito",
    channel_phone: "Phone",
  },
  ru: {
    title: "Входящие",
    login_title: "Вход во входящие",
    login_hint: "Вставьте API-токен (его выдаёт администратор: omniroute tokens issue --user ID).",
    token: "API-токен",
    sign_in: "Войти",
    sign_out: "Выйти",
    bad_token: "Токен неизвестен, отозван или пользователь отключён.",
    no_access: "У этого пользователя нет доступа к CRM.",
    session_expired: "Сеанс закончился: войдите снова.",
    network_error: "Сервис не отвечает. Повторяем…",
    language: "Язык",
    live: "онлайн",
    offline: "переподключение…",
    filter_mine: "Мои",
    filter_unassigned: "Без ответственного",
    filter_all: "Все",
    status_any: "Любой статус",
    status_open: "Открытые",
    status_snoozed: "Отложенные",
    status_closed: "Закрытые",
    conv_open: "Открыт",
    conv_snoozed: "Отложен",
    conv_closed: "Закрыт",
    search: "Поиск",
    no_conversations: "Здесь нет диалогов.",
    load_more: "Показать ещё",
    load_older: "Более ранние сообщения",
    unknown_contact: "Неизвестный контакт",
    unread: "непрочитанных: {n}",
    pick_conversation: "Выберите диалог слева.",
    back: "Назад",
    crm: "CRM",
    to_conversation: "Диалог",
    assignee: "Ответственный",
    nobody: "никто",
    take: "Взять себе",
    assign: "Назначить",
    assign_to: "Назначить…",
    unassign: "Снять",
    close: "Закрыть",
    reopen: "Открыть снова",
    snooze: "Отложить…",
    snooze_1h: "на 1 час",
    snooze_3h: "на 3 часа",
    snooze_tomorrow: "до завтра 9:00",
    snooze_week: "на неделю",
    snoozed_until: "отложен до {at}",
    dir_in: "входящее",
    dir_out: "исходящее",
    dir_note: "внутренняя заметка",
    note_label: "Заметка",
    automatic: "автоматически",
    state_queued: "в очереди",
    state_sent: "отправлено",
    state_delivered: "доставлено",
    state_read: "прочитано",
    state_failed: "ошибка отправки",
    edited: "изменено",
    call: "Звонок",
    call_missed: "Пропущенный звонок",
    call_duration: "{d}",
    recording: "Запись",
    attachment: "Вложение",
    reply_placeholder: "Ответ клиенту… (Ctrl+Enter — отправить)",
    note_placeholder: "Заметка для коллег… (Ctrl+Enter — сохранить)",
    as_note: "Внутренняя заметка",
    attach: "Прикрепить файл",
    remove: "Убрать",
    send: "Отправить",
    save_note: "Сохранить заметку",
    uploading: "загрузка…",
    contact: "Контакт",
    phones: "Телефоны",
    emails: "E-mail",
    lead: "Лид",
    deal: "Сделка",
    pipeline: "Воронка",
    stage: "Этап",
    move_stage: "Перевести",
    moved: "Переведено на этап «{stage}».",
    closed_entity: "закрыта",
    fields: "Поля",
    required_for: "обязательно для «{stage}»",
    required_missing: "Заполните, чтобы перейти на этап «{stage}».",
    save_fields: "Сохранить поля",
    saved: "Сохранено.",
    no_fields: "Полей пока нет.",
    add_field: "Добавить поле",
    field_name: "имя поля",
    convert: "Превратить в сделку",
    converted: "Готово: диалог теперь относится к сделке.",
    tasks: "Задачи",
    my_tasks: "Мои открытые задачи",
    no_tasks: "Задач нет.",
    deadline: "срок {at}",
    task_done: "выполнена",
    nothing_linked: "Нет ни лида, ни сделки.",
    notification: "Уведомление",
    error: "Ошибка",
    conflict: "Кто-то изменил это одновременно с вами; показано текущее состояние.",
    channel_api: "Сайт / API",
    channel_email: "Почта",
    channel_telegram: "Telegram",
    channel_whatsapp: "WhatsApp",
    channel_viber: "Viber",
    channel_vk: "ВКонтакте",
    channel_avito: "Авито",
    channel_phone: "Телефон",
  },
};

export const LANGUAGES = [
  ["ru", "Русский"],
  ["en", "English"],
];

const KEY = "omniroute.lang";
let current = pick();

function pick() {
  const saved = localStorage.getItem(KEY);
  if (saved && saved in STRINGS) return saved;
  const nav = (navigator.languages && navigator.languages[0]) || navigator.language || "en";
  return nav.toLowerCase().startsWith("ru") ? "ru" : "en";
}

export function lang() {
  return current;
}

export function setLang(code) {
  if (!(code in STRINGS)) return;
  current = code;
  localStorage.setItem(KEY, code);
  document.documentElement.lang = code;
}

export function t(key, params) {
  const text = STRINGS[current][key] ?? STRINGS.en[key] ?? key;
  if (!params) return text;
  return text.replace(/\{(\w+)\}/g, (_, name) => (name in params ? String(params[name]) : `{${name}}`));
}

export function when(value, withDate = true) {
  if (!value) return "";
  const date = new Date(value);
  if (Number.isNaN(date.getTime())) return "";
  const today = new Date();
  const sameDay = date.toDateString() === today.toDateString();
  const opts = sameDay || !withDate
    ? { hour: "2-digit", minute: "2-digit" }
    : { day: "numeric", month: "short", hour: "2-digit", minute: "2-digit" };
  return new Intl.DateTimeFormat(current, opts).format(date);
}

export function has(key) {
  return key in STRINGS.en;
}

document.documentElement.lang = current;
