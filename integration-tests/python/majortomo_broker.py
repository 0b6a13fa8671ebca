"""majortomo 0.2.0's broker at its default settings (as `python -m majortomo.broker` runs it).

usage: majortomo_broker.py ENDPOINT

Prints "ready", then binds ENDPOINT and serves until SIGTERM or until killed (peers that
connect first are accepted once it binds: ZeroMQ connects retry).
"""
import logging
import signal
import sys

from majortomo.broker import Broker

logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
broker = Broker(bind=sys.argv[1])
signal.signal(signal.SIGTERM, lambda *_: broker.stop())
print("ready", flush=True)
broker.run()
