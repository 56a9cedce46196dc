import uuid

from django.conf import settings
from django.db import models

from voiceproject.prepared import Prepared


class TeamQuerySet(models.QuerySet):
    def spend_visible_to(self, user):
        """The teams whose spend the user may see: every team for staff, the teams they administer
        otherwise (none for a member). The one answer to that question, for every view and socket."""
        if user.is_staff:
            return self
        return self.filter(memberships__user=user, memberships__role=Membership.ADMIN)


class Team(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=100, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = TeamQuerySet.as_manager()

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name


class Membership(models.Model):
    ADMIN = "admin"
    MEMBER = "member"
    READ_ONLY = "read_only"
    ROLE_CHOICES = [(ADMIN, "Team admin"), (MEMBER, "Member"), (READ_ONLY, "Read-only")]

    team = models.ForeignKey(Team, models.CASCADE, related_name="memberships")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=20, choices=ROLE_CHOICES, default=MEMBER)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["team", "user"], name="one_membership_per_team")]
        ordering = ["team__name", "user__username"]

    def __str__(self):
        return f"{self.user} in {self.team} ({self.role})"

    @property
    def can_write(self):
        return self.role != self.READ_ONLY

    @classmethod
    def primary_for(cls, user):
        """The membership a session is billed to: the user's oldest one (read on every start)."""
        return _primary_membership.first(user_id=user.pk)


_primary_membership = Prepared(
    lambda user_id: Membership.objects.filter(user_id=user_id).select_related("team").order_by("created_at", "pk")[:1],
    user_id=int,
)
