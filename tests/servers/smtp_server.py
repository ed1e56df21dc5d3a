"""A minimal local SMTP server that keeps the messages it receives (stdlib only).

Speaks enough of RFC 5321 for ``smtplib``: EHLO/HELO, AUTH PLAIN (one credential),
MAIL, RCPT, DATA (dot-unstuffed), RSET, NOOP, QUIT. Bound to 127.0.0.1:0 in a
thread; ready once ``start()`` returns.
"""

from __future__ import annotations

import base64
import email
import socketserver
import threading
from dataclasses import dataclass
from email.message import Message


@dataclass(frozen=True)
class Received:
    sender: str
    recipients: tuple[str, ...]
    message: Message
    login: str | None


class SMTPServer:
    def __init__(self, user: str | None = None, password: str | None = None) -> None:
        self.messages: list[Received] = []
        self.credentials = (user, password)
        server = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                server._session(self.rfile, self.wfile)

        self.tcp = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.tcp.daemon_threads = True
        self._thread = threading.Thread(target=self.tcp.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return self.tcp.server_address[1]

    def start(self) -> SMTPServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.tcp.shutdown()
        self.tcp.server_close()
        self._thread.join(10)

    def __enter__(self) -> SMTPServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _session(self, rfile, wfile) -> None:
        def reply(line: str) -> None:
            wfile.write(f"{line}\r\n".encode())
            wfile.flush()

        sender, recipients, login = "", [], None
        reply("220 localhost test SMTP")
        while line := rfile.readline():
            command = line.decode().rstrip("\r\n")
            verb = command.split(" ", 1)[0].upper()
            if verb == "EHLO":
                reply("250-localhost")
                reply("250 AUTH PLAIN" if self.credentials[0] else "250 HELP")
            elif verb == "HELO" or verb in ("NOOP", "RSET"):
                reply("250 OK")
            elif verb == "AUTH":
                login = self._auth(command, rfile, reply)
                if login is None:
                    return
            elif verb == "MAIL":
                sender = command.split(":", 1)[1].strip().split()[0].strip("<>")
                reply("250 OK")
            elif verb == "RCPT":
                recipients.append(command.split(":", 1)[1].strip().strip("<>"))
                reply("250 OK")
            elif verb == "DATA":
                reply("354 end with <CRLF>.<CRLF>")
                self._data(rfile, sender, recipients, login)
                sender, recipients = "", []
                reply("250 OK queued")
            elif verb == "QUIT":
                reply("221 bye")
                return
            else:
                reply("502 not implemented")

    def _auth(self, command: str, rfile, reply) -> str | None:
        parts = command.split()
        token = parts[2] if len(parts) > 2 else None
        if token is None:
            reply("334 ")
            token = rfile.readline().decode().strip()
        _, user, password = base64.b64decode(token).decode().split("\0")
        if (user, password) != self.credentials:
            reply("535 authentication failed")
            return None
        reply("235 authenticated")
        return user

    def _data(self, rfile, sender: str, recipients: list[str], login: str | None) -> None:
        lines = []
        while (line := rfile.readline()) not in (b".\r\n", b".\n", b""):
            lines.append(line[1:] if line.startswith(b"..") else line)
        message = email.message_from_bytes(b"".join(lines))
        self.messages.append(Received(sender, tuple(recipients), message, login))
