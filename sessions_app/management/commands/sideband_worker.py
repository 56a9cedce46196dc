import asyncio
import signal

from django.core.management.base import BaseCommand

from sessions_app.sideband import SidebandWorker


class Command(BaseCommand):
    help = "Watch every running call over the upstream's sideband: verified usage, transcripts, dead pages."

    def add_arguments(self, parser):
        parser.add_argument("--poll", type=float, default=1.0, help="seconds between looks for new calls")

    def handle(self, *args, poll, **options):
        asyncio.run(self._run(poll))

    async def _run(self, poll):
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        worker = SidebandWorker(poll_seconds=poll)
        self.stdout.write(f"sideband worker {worker.name} running", ending="\n")
        self.stdout.flush()
        await worker.run(stop)
