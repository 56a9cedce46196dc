"""The channel layers: Redis's with a bounded connection pool and one reader per process, and the
in-memory one for a single process; both with notices (publish/subscribe) beside their groups.

channels-redis opens as many connections as callers ask for at once: a burst of
sockets connecting together opened hundreds and failed some. Here each process
has at most CHANNEL_LAYER_POOL_SIZE connections to Redis, and a caller waits up
to REDIS_TIMEOUT_SECONDS for one to come free; past that it gets an error the
consumers answer by working without live pushes, never a 500.

Every socket of a process receives through one Redis list. channels-redis lets
whichever consumer is waiting pop from it for all the others, and cancels that pop
when the consumer stops: the ingest benchmark's dashboard lost about one spend
update in two runs that way (sent to Redis, never received), each as a usage
socket of the same process closed. Here one task per process (the reader) pops
and hands each message to its channel's queue; a consumer only ever waits on its
own queue, so stopping it touches nothing in Redis.

A notice (`publish`) reaches whoever subscribes to its topic at that moment and is kept for no one
else: the web processes tell the sideband workers of a new call that way. A group send cost
channels-redis four round trips to Redis (expire old members, list them, expire old messages, a Lua
script sent whole) and each receiver a pop and its bookkeeping; on the deployed topology it was the
largest part of a start's CPU in the web process (15%, a profile of 32 clients starting calls). A
notice is one PUBLISH, and its subscriber reads it off the connection it keeps.
"""

import asyncio
import contextlib
import json
import logging

import redis.asyncio
from channels.layers import InMemoryChannelLayer
from channels_redis.core import RedisChannelLayer
from django.conf import settings
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

RECONNECTED = {"type": "layer.reconnected"}


class BoundedRedisChannelLayer(RedisChannelLayer):
    # How long a channel whose wait was cancelled is still kept (its messages held for it): a timed
    # wait that ran out waits again at once; a consumer that stopped never does.
    FORGET_AFTER_SECONDS = 1.0

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # This process's channels with a live consumer: from new_channel() (or a first wait) until
        # FORGET_AFTER_SECONDS after a cancelled wait, if it does not wait again. Messages for any other
        # channel (a socket that closed) are dropped instead of kept forever.
        self.listening = set()
        self.waiting = {}  # channel -> waits under way
        self.reader = None

    def _topic(self, topic):
        return f"{self.prefix}:notice:{topic}"

    async def publish(self, topic, message):
        """`message` (a JSON-able dict) to the subscribers of `topic` now; raises if Redis is away."""
        await self.connection(0).publish(self._topic(topic), json.dumps(message))

    @contextlib.asynccontextmanager
    async def subscribe(self, topic):
        """Yields a `get()` coroutine for the notices on `topic` from now on; it raises once Redis is
        away (the subscription is gone with the connection: subscribe again)."""
        pubsub = self.connection(0).pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(self._topic(topic))

            async def get():
                while True:
                    # Blocks for as long as the topic is quiet (past the connection's socket timeout).
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=None)
                    if message is not None and message["type"] == "message":
                        return json.loads(message["data"])

            yield get
        finally:
            with contextlib.suppress(RedisError, OSError, asyncio.TimeoutError):
                await pubsub.aclose()

    def create_pool(self, index):
        host = dict(self.hosts[index])
        return redis.asyncio.BlockingConnectionPool.from_url(
            host.pop("address"),
            max_connections=settings.CHANNEL_LAYER_POOL_SIZE,
            timeout=settings.REDIS_TIMEOUT_SECONDS,
            **host,
        )

    async def new_channel(self, prefix="specific"):
        channel = await super().new_channel(prefix)
        self.listening.add(channel)
        return channel

    async def receive(self, channel):
        """The next message for `channel`; a wait outlives a Redis outage.

        When Redis answers again after an outage every listening channel gets
        {"type": "layer.reconnected"}: its groups may be gone (a restarted Redis
        forgets them), so its consumer joins them again.
        """
        assert self.require_valid_channel_name(channel)
        if "!" not in channel:
            return await self._receive_plain(channel)
        self.listening.add(channel)
        self._start_reader(self.non_local_name(channel))
        queue = self.receive_buffer[channel]
        self.waiting[channel] = self.waiting.get(channel, 0) + 1
        try:
            message = await queue.get()
        except asyncio.CancelledError:
            # Nothing was taken from the queue: what arrives meanwhile waits there for the next wait.
            asyncio.get_running_loop().call_later(self.FORGET_AFTER_SECONDS, self._forget, channel)
            raise
        finally:
            self.waiting[channel] -= 1
            if not self.waiting[channel]:
                del self.waiting[channel]
        if queue.empty() and self.receive_buffer.get(channel) is queue:
            del self.receive_buffer[channel]
        return message

    def _forget(self, channel):
        if channel in self.waiting:
            return  # it waits again
        self.listening.discard(channel)
        self.receive_buffer.pop(channel, None)
        if not self.listening and self.reader is not None:
            # Nobody is left to receive in this process: a message the reader is popping now has
            # no one to go to.
            self.reader.cancel()
            self.reader = None

    def _start_reader(self, real_channel):
        loop = asyncio.get_running_loop()
        if self.reader is not None and not self.reader.done():
            reader_loop = self.reader.get_loop()
            if reader_loop is loop:
                return
            if reader_loop.is_running():
                raise RuntimeError("Two event loops are trying to receive() on one channel layer at once!")
        self.reader = loop.create_task(self._read(real_channel), name="channel layer reader")

    async def _read(self, real_channel):
        """Pop this process's messages one by one and queue each for its channel."""
        while True:
            try:
                message_channel, message = await self.receive_single(real_channel)
            except (RedisError, OSError, asyncio.TimeoutError) as exc:
                if asyncio.current_task().cancelling():
                    # The reader was stopped mid-pop, and redis-py's timeouts turned that into an error.
                    raise asyncio.CancelledError from exc
                log.warning("channel layer: Redis unreachable (%s); retrying", type(exc).__name__)
                await self._until_reachable(real_channel)
                for channel in self.listening:
                    self.receive_buffer[channel].put_nowait(dict(RECONNECTED))
                continue
            except Exception:  # a message it cannot read: dropped, and the reader reads on
                log.exception("channel layer: a message could not be read")
                await asyncio.sleep(0.1)
                continue
            for channel in message_channel if isinstance(message_channel, list) else [message_channel]:
                if channel in self.listening:
                    self.receive_buffer[channel].put_nowait(message)

    async def _receive_plain(self, channel):
        # A channel without a process part (none of ours): its own pop, retried over an outage.
        try:
            return await super().receive(channel)
        except (RedisError, OSError, asyncio.TimeoutError) as exc:
            log.warning("channel layer: Redis unreachable (%s); retrying", type(exc).__name__)
        await self._until_reachable(channel)
        return dict(RECONNECTED)

    async def _until_reachable(self, channel):
        delay = 0.25
        while True:
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
            try:
                await self.connection(self.consistent_hash(channel)).ping()
                return
            except (RedisError, OSError, asyncio.TimeoutError):
                continue


class LocalChannelLayer(InMemoryChannelLayer):
    """The in-memory layer (one process), with the Redis layer's notices."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.subscribers = {}  # topic -> the queues of its subscriptions

    async def publish(self, topic, message):
        for queue in self.subscribers.get(topic, ()):
            queue.put_nowait(json.loads(json.dumps(message)))  # a copy, as it would arrive through Redis

    @contextlib.asynccontextmanager
    async def subscribe(self, topic):
        queue = asyncio.Queue()
        self.subscribers.setdefault(topic, set()).add(queue)
        try:
            yield queue.get
        finally:
            self.subscribers[topic].discard(queue)
