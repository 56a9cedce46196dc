import asyncio
import gc
import signal

from django.core.management.base import BaseCommand

from sessions_app import upstream
from sessions_app.sideband import SidebandWorker, supervise


class Command(BaseCommand):
    help = "Watch every running call over the upstream's sideband: context, verified usage, transcripts, policing."

    def add_arguments(self, parser):
        parser.add_argument("--poll", type=float, default=1.0, help="seconds between looks for new calls")

    def handle(self, *args, poll, **options):
        gc.freeze()  # as the server does (voiceproject/asgi.py): full collections skip what is loaded
        asyncio.run(self._run(poll))

    async def _run(self, poll):
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        self.stdout.write(f"sideband worker {SidebandWorker().name} running", ending="\n")
        self.stdout.flush()
        try:
            await supervise(stop, poll_seconds=poll)
        finally:
            await upstream.close()
