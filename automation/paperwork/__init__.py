"""Documents from templates: Russian formatting, numbering and DOCX rendering
(docs/documents.md). Pure apart from :mod:`automation.paperwork.render` reading template
files."""
