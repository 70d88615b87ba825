"""Bench only (bench/gateway_redis_client.sh): a process started with this folder on ``PYTHONPATH`` and
``SONALYZE_BENCH_REDIS_CLIENT=redis-py`` builds its ``redis://`` broker on redis-py (redis_py_broker.py)
instead of the gateway's own RESP client; anything else is left as it is. Python imports ``sitecustomize``
at start-up, before the gateway (which imports ``create_broker`` by name) or a benchmark runs."""

import os

if os.environ.get("SONALYZE_BENCH_REDIS_CLIENT") == "redis-py":
    from urllib.parse import urlsplit

    import sonalyze.gateway.broker as _broker

    _own_create_broker = _broker.create_broker

    def _create_broker(url, prefix, deliver, history_max=0, *args, **kwargs):
        if urlsplit(url).scheme != "redis":
            return _own_create_broker(url, prefix, deliver, history_max, *args, **kwargs)
        if history_max:
            raise SystemExit("the redis-py bench broker keeps no push history: run with PUSH_HISTORY_MAX=0")
        from redis_py_broker import RedisPyBroker

        return RedisPyBroker(url, prefix + "broadcast", deliver)

    _broker.create_broker = _create_broker
