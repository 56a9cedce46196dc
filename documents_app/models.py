import hashlib
import uuid

from django.conf import settings
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

    def search(self, query):
        """Title or full text containing every word of the query."""
        qs = self
        for word in query.split()[:8]:
            qs = qs.filter(Q(title__icontains=word) | Q(text__icontains=word))
        return qs


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
        if user.pk == self.owner_id:
            return True
        return Membership.objects.filter(user=user, team_id=self.team_id, role=Membership.ADMIN).exists()

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
