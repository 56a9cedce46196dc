from django.core.management.base import BaseCommand, CommandError

from sessions_app import rollups
from sessions_app.models import RealtimeSession, SpendDay, UsageRecord


class Command(BaseCommand):
    help = ("Compare the running totals of spend (day rollups, each conversation's bill) with a fresh sum of the "
            "usage records, which are the truth; --fix mends them.")

    def add_arguments(self, parser):
        parser.add_argument("--fix", action="store_true", help="rewrite the totals that differ")

    def handle(self, *args, fix, **options):
        differences = rollups.rebuild(SpendDay, UsageRecord, RealtimeSession, fix=fix)
        for line in differences:
            self.stdout.write(line)
        if not differences:
            self.stdout.write("The running totals equal the records.")
        elif fix:
            self.stdout.write(f"{len(differences)} total(s) mended.")
        else:
            raise CommandError(f"{len(differences)} total(s) differ; run with --fix to mend them.")
