import hashlib
import uuid

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.postgres.search import SearchVectorField
from django.db import models
from django.db.models import Q

from teams_app.models import Membership, Team


class DocumentQuerySet(models.QuerySet):
    def visible_to(self, user):
        """What the user may read: their teams' shared documents and their own private ones."""
        if not user.is_authenticated:
            return self.none()
        teams = Membership.objects.filter(user=user).values("team")
        return self.filter(Q(team__in=teams) & (Q(visibility=Document.TEAM) | Q(owner=user)))

    # What a list of documents shows (title, size, kind, owner, team, date), and nothing more: not the
    # text, nor the outline a search result would otherwise decode for nothing.
    LISTED = ("title", "tokens", "kind", "visibility", "created_at")

    def listed(self):
        return self.select_related("owner", "team").only(*self.LISTED, "owner__username", "team__name")

    def listed_rows(self):
        """The same as rows, cheaper to read than models: (id, LISTED..., owner id, owner's user name,
        team id, team name), which Document.from_listed_row() turns into what listed() gives."""
        return self.values_list("id", *self.LISTED, "owner_id", "owner__username", "team_id", "team__name")



class Document(models.Model):
    TEAM = "team"
    PRIVATE = "private"
    VISIBILITY_CHOICES = [(TEAM, "Everyone in the team"), (PRIVATE, "Only me")]
    KIND_CHOICES = [("text", "Text"), ("markdown", "Markdown"), ("html", "HTML"), ("pdf", "PDF"), ("docx", "Word")]

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    team = models.ForeignKey(Team, models.CASCADE, related_name="documents")
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, models.PROTECT, related_name="documents")
    title = models.CharField(max_length=200)
    filename = models.CharField(max_length=255)
    kind = models.CharField(max_length=10, choices=KIND_CHOICES)
    visibility = models.CharField(max_length=10, choices=VISIBILITY_CHOICES, default=TEAM)
    text = models.TextField()
    # sha256 of the extracted text: what "the same document" and "this version" mean.
    sha256 = models.CharField(max_length=64)
    tokens = models.PositiveIntegerField(help_text="o200k_base tokens of the text")
    size_bytes = models.PositiveIntegerField(help_text="size of the uploaded file")
    pages = models.PositiveIntegerField(null=True, blank=True)
    encoding = models.CharField(max_length=40, blank=True)
    # Where new parts begin, for passages: {"pages": [[offset, page], ...]} or {"headings": [...]}.
    outline = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = DocumentQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["team", "sha256"]), models.Index(fields=["team", "-created_at"])]

    def __str__(self):
        return self.title

    @staticmethod
    def hash_text(text):
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def can_delete(self, user):
        """Its team's admins, and its owner while a member who may write there (not read-only)."""
        role = Membership.objects.filter(user=user, team_id=self.team_id).values_list("role", flat=True).first()
        return role == Membership.ADMIN or (role == Membership.MEMBER and user.pk == self.owner_id)

    @classmethod
    def from_listed_row(cls, row, db="default"):
        """A Document as listed() reads it, from a row in listed_rows()' order."""
        *own, owner_id, username, team_id, team_name = row
        fields = dict(zip(("id", *DocumentQuerySet.LISTED), own), owner_id=owner_id, team_id=team_id)
        names = [f.attname for f in cls._meta.concrete_fields if f.attname in fields]  # in the model's order
        document = cls.from_db(db, names, [fields[name] for name in names])
        document.owner = get_user_model().from_db(db, ("id", "username"), (owner_id, username))
        document.team = Team.from_db(db, ("id", "name"), (team_id, team_name))
        return document

    def as_json(self):
        return {
            "id": str(self.pk),
            "title": self.title,
            "tokens": self.tokens,
            "kind": self.kind,
            "visibility": self.visibility,
            "owner": self.owner.get_username(),
            "team": self.team.name,
            "created_at": self.created_at.isoformat(),
        }

    def save(self, *args, **kwargs):
        adding = self._state.adding
        super().save(*args, **kwargs)
        if adding:
            # Stored means searchable: however a document is made, it gets its passages.
            self.index_passages()

    def segments(self):
        """The text as runs [(passage id or None, text)], a new run where each passage begins."""
        bounds = [(0, None), *sorted(self.passages.values_list("start", "pk"))]
        runs = []
        for index, (start, pk) in enumerate(bounds):
            end = bounds[index + 1][0] if index + 1 < len(bounds) else len(self.text)
            if end > start:
                runs.append((pk, self.text[start:end]))
        return runs

    def index_passages(self):
        """Cut the text into passages and store them (the search engines index them as they go in)."""
        from .passages import split

        self.passages.all().delete()
        Passage.objects.bulk_create(
            [
                Passage(document=self, position=i, start=p.start, end=p.end, text=p.text, tokens=p.tokens,
                        page=p.page, section=p.section, title=self.title)
                for i, p in enumerate(split(self.text, self.kind, self.outline))
            ],
            batch_size=500,
        )


class Passage(models.Model):
    """A few hundred tokens of a document, where they came from, and their place in its text."""

    document = models.ForeignKey(Document, models.CASCADE, related_name="passages")
    position = models.PositiveIntegerField()
    start = models.PositiveIntegerField(help_text="offset of the passage in the document's text")
    end = models.PositiveIntegerField()
    text = models.TextField()
    tokens = models.PositiveIntegerField()
    page = models.PositiveIntegerField(null=True, blank=True)
    section = models.CharField(max_length=300, blank=True)
    # The document's title again: both engines index it with the passage, weighted above the text.
    title = models.CharField(max_length=200)
    # PostgreSQL's tsvector, kept by a trigger (documents_app/search.py); unused (NULL) on SQLite,
    # where an FTS5 table mirrors the passages instead.
    search = SearchVectorField(null=True, editable=False)

    class Meta:
        ordering = ["document", "position"]
        constraints = [models.UniqueConstraint(fields=["document", "position"], name="one_passage_per_position")]

    def __str__(self):
        return f"{self.title} #{self.position}"

    @property
    def label(self):
        from .passages import label

        return label(self.title, self.page, self.section)
