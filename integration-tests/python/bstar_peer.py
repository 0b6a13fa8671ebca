"""A Binary Star server written from the Guide's description (chapter 4, "High-Availability Pair"),
on pyzmq and libzmq, for pairing with our broker.

usage: bstar_peer.py primary|backup FRONTEND STATE_BIND STATE_PEER

Binds a ROUTER on FRONTEND that echoes each client request while this server is active and drops
it otherwise; publishes its state on STATE_BIND (PUB) once per heartbeat as ASCII decimal
(PRIMARY=1, BACKUP=2, ACTIVE=3, PASSIVE=4); subscribes to the peer's on STATE_PEER (SUB). The
peer is dead after two heartbeats without news. Exits with status 1 on a fatal state (both
active, both passive). Prints "ready" once its sockets are set up.
"""
import sys
import time

import zmq

PRIMARY, BACKUP, ACTIVE, PASSIVE = 1, 2, 3, 4
PEER_PRIMARY, PEER_BACKUP, PEER_ACTIVE, PEER_PASSIVE, CLIENT_REQUEST = 1, 2, 3, 4, 5
HEARTBEAT = 1.0


class Fatal(Exception):
    pass


def now():
    return time.monotonic()


class Fsm:
    def __init__(self, primary):
        self.state = PRIMARY if primary else BACKUP
        # Armed at start: a request reaches a just-started primary only after two heartbeats
        # without news of an active peer.
        self.peer_expiry = now() + 2 * HEARTBEAT

    def event(self, event):
        """Applies an event; returns True when a client request is to be answered."""
        s = self.state
        if s == PRIMARY:
            if event == PEER_BACKUP:
                self.state = ACTIVE
            elif event == PEER_ACTIVE:
                self.state = PASSIVE
            elif event == CLIENT_REQUEST:
                if now() >= self.peer_expiry:
                    self.state = ACTIVE
                    return True
                return False
        elif s == BACKUP:
            if event == PEER_ACTIVE:
                self.state = PASSIVE
            elif event == CLIENT_REQUEST:
                return False
        elif s == ACTIVE:
            if event == PEER_ACTIVE:
                raise Fatal("dual actives")
            return event == CLIENT_REQUEST
        elif s == PASSIVE:
            if event in (PEER_PRIMARY, PEER_BACKUP):
                self.state = ACTIVE
            elif event == PEER_PASSIVE:
                raise Fatal("dual passives")
            elif event == CLIENT_REQUEST:
                if now() >= self.peer_expiry:
                    self.state = ACTIVE
                    return True
                return False
        return False


def main():
    role, frontend_ep, bind_ep, peer_ep = sys.argv[1:5]
    ctx = zmq.Context()
    frontend = ctx.socket(zmq.ROUTER)
    frontend.setsockopt(zmq.LINGER, 0)
    frontend.bind(frontend_ep)
    statepub = ctx.socket(zmq.PUB)
    statepub.setsockopt(zmq.LINGER, 0)
    statepub.bind(bind_ep)
    statesub = ctx.socket(zmq.SUB)
    statesub.setsockopt(zmq.LINGER, 0)
    statesub.setsockopt(zmq.SUBSCRIBE, b"")
    statesub.connect(peer_ep)
    fsm = Fsm(role == "primary")
    print("ready", flush=True)
    poller = zmq.Poller()
    poller.register(frontend, zmq.POLLIN)
    poller.register(statesub, zmq.POLLIN)
    send_state_at = now() + HEARTBEAT
    try:
        while True:
            timeout = max(0.0, send_state_at - now())
            events = dict(poller.poll(int(timeout * 1000)))
            if frontend in events:
                msg = frontend.recv_multipart()
                if fsm.event(CLIENT_REQUEST):
                    frontend.send_multipart(msg)
            if statesub in events:
                state = int(statesub.recv().decode().strip("\0 \n"))
                fsm.event(state)
                fsm.peer_expiry = now() + 2 * HEARTBEAT
            if now() >= send_state_at:
                statepub.send_string("%d" % fsm.state)
                send_state_at = now() + HEARTBEAT
    except Fatal as error:
        print("fatal: %s" % error, flush=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
