"""Listening for associations: the node's AE with every storage SOP class, a plain and a TLS port side by
side (either can be off), each a guarded server running the receiver's handlers."""

from __future__ import annotations

import logging
import socket
import socketserver
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass

from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification
from pynetdicom.transport import ThreadedAssociationServer

from db.engine import Database
from pacs_node import metrics
from pacs_node.logs import printable
from pacs_node.scp import Receiver, ReceiverConfig
from pacs_node.tls import server_context

log = logging.getLogger("ainode.receive")

TRANSFER_SYNTAXES = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    JPEGLosslessSV1,
    JPEGLossless,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    RLELossless,
)


class GuardedServer(ThreadedAssociationServer):
    """The threaded server with a listen backlog that holds a burst of senders (socketserver's is 5).

    On a TLS port, pynetdicom would do each TLS handshake in the thread that accepts every connection, so
    one peer that never sends its hello would stop the port; here the handshake is done in the
    connection's own thread, within the negotiation timeout, and a failed one is refused and audited."""

    request_queue_size = 128
    handshake_timeout = 5.0
    on_refused: Callable[[str, str], None] = staticmethod(lambda address, reason: None)

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        client, address = self.socket.accept()
        if self.ssl_context:
            client = self.ssl_context.wrap_socket(client, server_side=True, do_handshake_on_connect=False)
        return client, address

    def finish_request(self, request: object, client_address: object) -> None:
        if isinstance(request, ssl.SSLSocket):
            address = str(client_address[0]) if isinstance(client_address, tuple) else str(client_address)
            try:
                request.settimeout(self.handshake_timeout)
                request.do_handshake()
            except (OSError, ssl.SSLError) as exc:
                self.on_refused(address, f"TLS handshake failed: {getattr(exc, 'reason', None) or exc}")
                return
        super().finish_request(request, client_address)

    def handle_error(self, request: object, client_address: object) -> None:
        log.debug("connection from %s ended in an error", printable(client_address), exc_info=True)

    def shutdown(self) -> None:
        """Stop serving and close the socket (the server was made, not started, by the AE)."""
        socketserver.TCPServer.shutdown(self)
        self.server_close()


def make_ae(config: ReceiverConfig) -> AE:
    limits = config.limits
    ae = AE(ae_title=config.ae_title)
    ae.maximum_pdu_size = limits.maximum_pdu_size
    ae.network_timeout = limits.network_timeout
    ae.acse_timeout = limits.negotiation_timeout  # ARTIM, and the wait for the A-ASSOCIATE-RQ
    # The guard limits established and negotiating associations apart; pynetdicom's own limit counts both.
    ae.maximum_associations = limits.maximum_associations + limits.maximum_negotiating
    ae.require_called_aet = True
    ae.require_calling_aet = []  # callers are admitted by the receiver (title, address, transport), and audited
    ae.add_supported_context(Verification)
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(context.abstract_syntax, list(TRANSFER_SYNTAXES))
    return ae


@dataclass
class Listeners:
    """The running servers of one receiver: stop them all with ``shutdown``."""

    servers: list[GuardedServer]

    def shutdown(self) -> None:
        for server in self.servers:
            server.shutdown()


def start(config: ReceiverConfig, db: Database) -> Listeners:
    """Start listening in the background; stop with ``shutdown()``."""
    return serve(Receiver(config, db))


def serve(receiver: Receiver) -> Listeners:
    """Start the plain and TLS ports (those that are configured) with ``receiver``'s handlers."""
    config = receiver.config
    handlers = receiver.guard.handlers() + [
        (evt.EVT_C_ECHO, receiver.handle_echo),
        (evt.EVT_C_STORE, receiver.handle_store),
        (evt.EVT_ESTABLISHED, receiver.associations.established),
        (evt.EVT_RELEASED, receiver.associations.released),
        (evt.EVT_CONN_CLOSE, receiver.associations.closed),
        *metrics.HANDLERS,
    ]
    ae = make_ae(config)
    ports = [(config.port, None), (config.tls_port, server_context(config.tls) if config.tls else None)]
    servers = []
    try:
        for port, context in ports:
            if not port or (port == config.tls_port and context is None):
                continue
            server = ae.make_server((config.bind_address, port), evt_handlers=handlers, server_class=GuardedServer,
                                    ssl_context=context)
            server.handshake_timeout = config.limits.negotiation_timeout
            server.on_refused = receiver.refused_connection
            servers.append(server)
            receiver.guard.servers.append(server)
            threading.Thread(target=server.serve_forever, name=f"ainode-receive-{port}", daemon=True).start()
            log.info("%s listening on %s:%d%s", config.ae_title, config.bind_address, port,
                     " (DICOM TLS)" if context else "")
    except BaseException:
        Listeners(servers).shutdown()
        raise
    return Listeners(servers)
