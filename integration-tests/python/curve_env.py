"""CURVE for a test peer, from the environment: MDP_CURVE_SERVER_KEY (Z85) turns it on; the
peer's own pair comes from MDP_CURVE_PUBLIC and MDP_CURVE_SECRET, or is made for the connection.
Call before connect()."""
import os

import zmq


def apply(sock):
    server = os.environ.get("MDP_CURVE_SERVER_KEY")
    if not server:
        return
    public, secret = os.environ.get("MDP_CURVE_PUBLIC"), os.environ.get("MDP_CURVE_SECRET")
    if not public:
        public, secret = (k.decode() for k in zmq.curve_keypair())
    sock.curve_serverkey = server.encode()
    sock.curve_publickey = public.encode()
    sock.curve_secretkey = secret.encode()


def serve(sock):
    """A CURVE server when MDP_CURVE_SERVER_SECRET (Z85) is set. Call before bind()."""
    secret = os.environ.get("MDP_CURVE_SERVER_SECRET")
    if not secret:
        return
    sock.curve_server = True
    sock.curve_secretkey = secret.encode()
