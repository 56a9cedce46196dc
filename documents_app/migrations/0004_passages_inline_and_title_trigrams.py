"""PostgreSQL only; SQLite has nothing to change.

Passages kept whole in their rows. A passage row (text about 1.4 KB, its search vector about 2.3 KB)
is past the 2 KB at which PostgreSQL moves a row's largest value out to the TOAST table, so every
candidate a search ranked cost a second lookup there for its vector: at 400,000 passages, 10 of a
library search's 14 ms were that. With the row's TOAST target at a page's worth, rows this size stay
whole (a passage far larger than a few hundred tokens is still moved out). Existing passages are
rewritten once (their trigger recomputes each vector) to take the new layout.

Titles by trigram. The library's "titles that contain what was typed" is an unanchored
case-insensitive LIKE, which without an index reads every document (5 ms at 10,000). The index is on
the expression Django's icontains compares, UPPER(title::text). pg_trgm ships with PostgreSQL and is
a trusted extension (13+), so the database's owner may create it.
"""

from django.db import migrations

INSTALL = [
    "ALTER TABLE documents_app_passage SET (toast_tuple_target = 8160)",
    "UPDATE documents_app_passage SET text = text",  # the trigger recomputes each vector, stored whole
    "CREATE EXTENSION IF NOT EXISTS pg_trgm",
    "CREATE INDEX documents_title_trigrams ON documents_app_document USING gin (UPPER(title::text) gin_trgm_ops)",
]
UNINSTALL = [
    "DROP INDEX IF EXISTS documents_title_trigrams",
    "ALTER TABLE documents_app_passage RESET (toast_tuple_target)",
]


def _on_postgresql(statements):
    def run(apps, schema_editor):
        if schema_editor.connection.vendor == "postgresql":
            for statement in statements:
                schema_editor.execute(statement)

    return run


class Migration(migrations.Migration):
    dependencies = [("documents_app", "0003_search_engines_and_passages_of_existing_documents")]

    operations = [migrations.RunPython(_on_postgresql(INSTALL), _on_postgresql(UNINSTALL))]
