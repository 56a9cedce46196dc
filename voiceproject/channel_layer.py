"""The Redis channel layer with a bounded connection pool.

channels-redis opens as many connections as callers ask for at once: a burst of
sockets connecting together opened hundreds and failed some. Here each process
has at most CHANNEL_LAYER_POOL_SIZE connections to Redis, and a caller waits up
to REDIS_TIMEOUT_SECONDS for one to come free; past that it gets an error the
consumers answer by working without live pushes, never a 500.
"""

import asyncio
import logging

import redis.asyncio
from channels_redis.core import RedisChannelLayer
from django.conf import settings
from redis.exceptions import RedisError

log = logging.getLogger(__name__)


class BoundedRedisChannelLayer(RedisChannelLayer):
    def create_pool(self, index):
        host = dict(self.hosts[index])
        return redis.asyncio.BlockingConnectionPool.from_url(
            host.pop("address"),
            max_connections=settings.CHANNEL_LAYER_POOL_SIZE,
            timeout=settings.REDIS_TIMEOUT_SECONDS,
            **host,
        )

    async def receive(self, channel):
        """A consumer's wait for its next message outlives a Redis outage.

        channels-redis hands a failed read to the one waiter that made it, and that
        consumer dies with it. Here the waiter retries with backoff, and once Redis
        answers again it gets {"type": "layer.reconnected"}: its groups may be gone
        (a restarted Redis forgets them), so it joins them again.
        """
        delay = 0.25
        while True:
            try:
                return await super().receive(channel)
            except (RedisError, OSError, asyncio.TimeoutError) as exc:
                log.warning("channel layer: Redis unreachable (%s); retrying", type(exc).__name__)
            while True:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                if await self._reachable(channel):
                    return {"type": "layer.reconnected"}

    async def _reachable(self, channel):
        try:
            await self.connection(self.consistent_hash(channel)).ping()
        except (RedisError, OSError, asyncio.TimeoutError):
            return False
        return True
