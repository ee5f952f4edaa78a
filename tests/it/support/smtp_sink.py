"""A mail server for the tests: aiosmtpd on loopback, saving each message
it accepts as a JSON file (envelope, headers, decoded body) in a directory.

  smtp_sink.py --port N --dir DIR [--tls-cert PEM --tls-key PEM]
               [--auth USER:PASSWORD] [--refuse ADDRESS ...]

With --tls-cert/--tls-key it offers STARTTLS and requires it before AUTH
or mail; with --auth it requires AUTH PLAIN/LOGIN with those credentials.
--refuse answers RCPT TO for that address with 550. Prints "ready PORT"
once listening; exits when its standard input closes (the test is gone).
"""

import argparse
import asyncio
import email
import email.policy
import json
import os
import ssl
import sys
import threading

from aiosmtpd.smtp import SMTP, AuthResult


class Sink:
    def __init__(self, directory, refuse):
        self.directory = directory
        self.refuse = {a.lower() for a in refuse}
        self.count = 0

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.lower() in self.refuse:
            return "550 5.1.1 no such mailbox here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        message = email.message_from_bytes(envelope.original_content, policy=email.policy.default)
        body = message.get_body(preferencelist=("plain",))
        self.count += 1
        record = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "headers": [[k, str(v)] for k, v in message.items()],
            "subject": str(message["subject"]),
            "to": str(message["to"]),
            "from": str(message["from"]),
            "content_type": message.get_content_type(),
            "body": body.get_content() if body is not None else "",
            "tls": session.ssl is not None,
            "authenticated": bool(session.authenticated),
        }
        name = os.path.join(self.directory, "%06d.json" % self.count)
        with open(name + ".tmp", "w") as f:
            json.dump(record, f)
        os.rename(name + ".tmp", name)
        return "250 Message accepted"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dir", required=True)
    parser.add_argument("--tls-cert")
    parser.add_argument("--tls-key")
    parser.add_argument("--auth")
    parser.add_argument("--refuse", action="append", default=[])
    args = parser.parse_args()

    tls = None
    if args.tls_cert:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(args.tls_cert, args.tls_key)

    def authenticator(server, session, envelope, mechanism, auth_data):
        user, password = args.auth.split(":", 1)
        ok = auth_data.login.decode() == user and auth_data.password.decode() == password
        return AuthResult(success=ok)

    handler = Sink(args.dir, args.refuse)

    def factory():
        return SMTP(
            handler,
            hostname="sink.test",
            tls_context=tls,
            require_starttls=tls is not None,
            authenticator=authenticator if args.auth else None,
            auth_required=bool(args.auth),
            auth_require_tls=tls is not None,
        )

    loop = asyncio.new_event_loop()
    server = loop.run_until_complete(loop.create_server(factory, "127.0.0.1", args.port))
    port = server.sockets[0].getsockname()[1]
    print("ready %d" % port, flush=True)

    def watch_stdin():
        sys.stdin.read()
        os._exit(0)

    threading.Thread(target=watch_stdin, daemon=True).start()
    loop.run_forever()


if __name__ == "__main__":
    main()
