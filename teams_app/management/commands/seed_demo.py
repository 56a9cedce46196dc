from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from teams_app.models import Membership, Team

# (username, team, role); the team is None for the staff superuser.
DEMO_USERS = [
    ("alice", "Demo", Membership.ADMIN),
    ("bob", "Demo", Membership.MEMBER),
    ("erin", "Demo", Membership.READ_ONLY),
    ("dave", "Other", Membership.ADMIN),
    ("admin", None, None),
]


class Command(BaseCommand):
    help = "Create the demo teams and users (idempotent); every demo user gets --password."

    def add_arguments(self, parser):
        parser.add_argument("--password", required=True, help="password for every demo user")

    @transaction.atomic
    def handle(self, *args, password, **options):
        # The contract: every demo user gets PW, whatever it is. Demo accounts on a machine of one's own;
        # an empty password would let no one in, and a short one is said to be weak.
        if not password:
            raise CommandError("--password must not be empty")
        if len(password) < 8:
            self.stderr.write("warning: a password under 8 characters is easy to guess; use a longer one "
                              "anywhere but your own machine")
        User = get_user_model()
        created = []
        for username, team_name, role in DEMO_USERS:
            user, was_created = User.objects.get_or_create(
                username=username, defaults={"email": f"{username}@example.test"}
            )
            if username == "admin":
                user.is_staff = user.is_superuser = True
            user.set_password(password)
            user.save()
            if was_created:
                created.append(username)
            if team_name:
                team, _ = Team.objects.get_or_create(name=team_name)
                Membership.objects.update_or_create(team=team, user=user, defaults={"role": role})
        names = ", ".join(u for u, _, _ in DEMO_USERS)
        self.stdout.write(f"demo users ({names}) ready; created this run: {', '.join(created) or 'none'}")
