// The survey page's language switch without a reload (inbox/survey_page.py). The page
// works without this script: the switch is a ?lang= link and the form a plain POST.
const root = document.documentElement;
const link = document.getElementById("switch");
const field = document.getElementById("lang");

function show(lang) {
  root.dataset.lang = lang;
  root.lang = lang;
  if (field) field.value = lang;
  if (link) link.href = `?lang=${lang === "ru" ? "en" : "ru"}`;
}

link?.addEventListener("click", (event) => {
  event.preventDefault();
  show(root.dataset.lang === "ru" ? "en" : "ru");
});
