"""The two search engines' indexes over passages, and passages for the documents already stored.

SQLite: an FTS5 table over the passages (external content, porter stemming),
kept in step by triggers. PostgreSQL: the passage's tsvector (title A, section
B, text C, English), kept by a trigger, under a GIN index. Documents stored
before passages existed get theirs here; their outline is unknown, so a PDF's
passages carry no page (Markdown headings are read from the text).
"""

from django.db import migrations

SQLITE = [
    """CREATE VIRTUAL TABLE documents_passage_fts USING fts5(
        title, section, text, content='documents_app_passage', content_rowid='id',
        tokenize='porter unicode61 remove_diacritics 2')""",
    """CREATE TRIGGER documents_passage_fts_insert AFTER INSERT ON documents_app_passage BEGIN
        INSERT INTO documents_passage_fts(rowid, title, section, text)
        VALUES (new.id, new.title, new.section, new.text);
    END""",
    """CREATE TRIGGER documents_passage_fts_delete AFTER DELETE ON documents_app_passage BEGIN
        INSERT INTO documents_passage_fts(documents_passage_fts, rowid, title, section, text)
        VALUES ('delete', old.id, old.title, old.section, old.text);
    END""",
    """CREATE TRIGGER documents_passage_fts_update AFTER UPDATE ON documents_app_passage BEGIN
        INSERT INTO documents_passage_fts(documents_passage_fts, rowid, title, section, text)
        VALUES ('delete', old.id, old.title, old.section, old.text);
        INSERT INTO documents_passage_fts(rowid, title, section, text)
        VALUES (new.id, new.title, new.section, new.text);
    END""",
]
POSTGRESQL = [
    """CREATE FUNCTION documents_passage_search() RETURNS trigger AS $$
    BEGIN
        NEW.search := setweight(to_tsvector('english', coalesce(NEW.title, '')), 'A')
            || setweight(to_tsvector('english', coalesce(NEW.section, '')), 'B')
            || setweight(to_tsvector('english', coalesce(NEW.text, '')), 'C');
        RETURN NEW;
    END $$ LANGUAGE plpgsql""",
    """CREATE TRIGGER documents_passage_search BEFORE INSERT OR UPDATE ON documents_app_passage
        FOR EACH ROW EXECUTE FUNCTION documents_passage_search()""",
    "CREATE INDEX documents_passage_search_gin ON documents_app_passage USING gin (search)",
]
UNDO_SQLITE = ["DROP TABLE IF EXISTS documents_passage_fts"] + [
    f"DROP TRIGGER IF EXISTS documents_passage_fts_{what}" for what in ("insert", "delete", "update")
]
UNDO_POSTGRESQL = [
    "DROP INDEX IF EXISTS documents_passage_search_gin",
    "DROP TRIGGER IF EXISTS documents_passage_search ON documents_app_passage",
    "DROP FUNCTION IF EXISTS documents_passage_search()",
]


def _run(schema_editor, statements):
    for statement in statements[schema_editor.connection.vendor]:
        schema_editor.execute(statement)


def install(apps, schema_editor):
    _run(schema_editor, {"sqlite": SQLITE, "postgresql": POSTGRESQL})


def uninstall(apps, schema_editor):
    _run(schema_editor, {"sqlite": UNDO_SQLITE, "postgresql": UNDO_POSTGRESQL})


def passages_for_existing_documents(apps, schema_editor):
    from documents_app.passages import split

    Document = apps.get_model("documents_app", "Document")
    Passage = apps.get_model("documents_app", "Passage")
    for document in Document.objects.iterator(chunk_size=50):
        Passage.objects.bulk_create(
            [
                Passage(document=document, position=i, start=p.start, end=p.end, text=p.text, tokens=p.tokens,
                        page=p.page, section=p.section, title=document.title)
                for i, p in enumerate(split(document.text, document.kind, document.outline))
            ],
            batch_size=500,
        )


class Migration(migrations.Migration):
    dependencies = [("documents_app", "0002_passages")]

    operations = [
        migrations.RunPython(install, uninstall),
        migrations.RunPython(passages_for_existing_documents, migrations.RunPython.noop),
    ]
