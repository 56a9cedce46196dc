import datetime
import math
import random
from contextlib import contextmanager
from decimal import ROUND_HALF_UP

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from sessions_app import rollups
from sessions_app.models import COST_PLACES, ModelPrice, RealtimeSession, SpendDay, UsageRecord, month_start
from sessions_app.pricing import TokenCounts, cost_of
from teams_app.models import Membership

BATCH_SESSIONS = 250


@contextmanager
def _dates_as_given(*fields):
    """Let bulk inserts keep the created_at they are given instead of now."""
    for field in fields:
        field.auto_now_add = False
    try:
        yield
    finally:
        for field in fields:
            field.auto_now_add = True


class Command(BaseCommand):
    help = ("Make synthetic usage history for the current month over the demo users, teams and models "
            "(bulk inserts; the running totals are kept consistent, as `rebuild_spend` can check).")

    def add_arguments(self, parser):
        parser.add_argument("--records", type=int, required=True, help="how many usage records to add")
        parser.add_argument("--per-session", type=int, default=20, help="usage records per conversation")
        parser.add_argument("--seed", type=int, default=1, help="random seed, for repeatable histories")

    def handle(self, *args, records, per_session, seed, **options):
        if records < 0 or per_session < 1:
            raise CommandError("--records must be 0 or more and --per-session at least 1.")
        people = [(m.user, m.team) for m in Membership.objects.select_related("user", "team").order_by("pk")]
        if not people:
            raise CommandError("No team members to spend for: run `manage.py seed_demo` first.")
        prices = {p.model: p for p in ModelPrice.objects.filter(model__in=settings.REALTIME_MODELS)}
        if not prices:
            raise CommandError("None of REALTIME_MODELS has a price.")
        rng = random.Random(seed)
        now = timezone.now()
        first = month_start(now)
        days = {}
        left, made_sessions = records, 0
        with _dates_as_given(RealtimeSession._meta.get_field("created_at"),
                             UsageRecord._meta.get_field("created_at")):
            while left > 0:
                batch = min(left, BATCH_SESSIONS * per_session)
                self._batch(rng, people, prices, first, now, batch, per_session, days)
                made_sessions += math.ceil(batch / per_session)
                left -= batch
        with transaction.atomic():
            for key, sums in days.items():
                day, user_id, team_id, model = key
                team_key = team_id.hex if team_id else ""
                found = SpendDay.objects.filter(day=day, user_id=user_id, team_key=team_key, model=model)
                if not found.update(**{name: F(name) + value for name, value in sums.items()}):
                    SpendDay.objects.create(day=day, user_id=user_id, team_id=team_id, team_key=team_key,
                                            model=model, **sums)
        self.stdout.write(f"Added {records:,} usage records in {made_sessions:,} conversations "
                          f"from {first:%Y-%m-%d} to {now:%Y-%m-%d}.")

    def _batch(self, rng, people, prices, first, now, count, per_session, days):
        span = max((now - first).total_seconds() - 3600, 1)
        sessions, records = [], []
        while count > 0:
            n = min(count, per_session)
            count -= n
            user, team = rng.choice(people)
            model = rng.choice(sorted(prices))
            started = first + datetime.timedelta(seconds=rng.uniform(0, span))
            session = RealtimeSession(
                user=user, team=team, model=model, voice="marin", turn_detection="server_vad",
                instructions="Synthetic history.", status="ended", created_at=started, connected_at=started,
                ended_at=min(started + datetime.timedelta(seconds=30 * n + 20), now),
            )
            mine = []
            answer = 0
            while len(mine) < n:
                counts = TokenCounts(
                    input_text=(text := rng.randint(50, 4000)), input_audio=rng.randint(0, 8000),
                    cached_text=rng.randint(0, text), output_text=rng.randint(5, 400),
                    output_audio=rng.randint(0, 2000),
                )
                cost = cost_of(counts, prices[model]).quantize(COST_PLACES, ROUND_HALF_UP)
                at = started + datetime.timedelta(seconds=30 * answer + 10)
                # The server verifies every answer; every fifth the page reported as well.
                sources = ["server", "client"] if answer % 5 == 4 and n - len(mine) >= 2 else ["server"]
                for source in sources:
                    mine.append(UsageRecord(
                        session=session, response_id=f"resp_seed_{answer}", source=source, model=model,
                        cost_usd=cost, created_at=at, **counts.as_record_fields()))
                answer += 1
            sums, parts = rollups.sums_of([
                {name: getattr(r, name) for name in rollups.RECORD_FIELDS if name != "session_id"}
                for r in mine])
            for name in rollups.SESSION_FIELDS:
                setattr(session, name, sums[name])
            for day, part in parts.items():
                row = days.setdefault((day, user.pk, team.pk if team else None, model),
                                      dict.fromkeys(rollups.DAY_FIELDS, 0))
                for name in rollups.DAY_FIELDS:
                    row[name] += part[name]
            sessions.append(session)
            records.extend(mine)
        with transaction.atomic():
            RealtimeSession.objects.bulk_create(sessions, batch_size=1000)
            UsageRecord.objects.bulk_create(records, batch_size=2000)
