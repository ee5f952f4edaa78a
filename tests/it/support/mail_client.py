"""Mail clients for the mail auth_http tests, on Python's standard library
only (imaplib, poplib, smtplib). Each command prints one JSON line.

  mail_client.py imap HOST PORT USER PASSWORD [--tries N]
      signs in (N times in one connection with PASSWORD-1, PASSWORD-2, ...
      when N > 1, stopping at the first success), then lists INBOX:
      {"ok", "error", "errors" (each refusal), "tries", "closed", "subjects"}
  mail_client.py pop3 HOST PORT USER PASSWORD
      {"ok", "error", "count"}
  mail_client.py smtp HOST PORT USER PASSWORD TO SUBJECT
      AUTH PLAIN, then one message from USER to TO: {"ok", "error", "code"}

"closed" says the server ended the connection after the last refusal.
"""

import email
import email.policy
import imaplib
import json
import poplib
import smtplib
import socket
import sys

TIMEOUT = 20


def text(value):
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, (list, tuple)):
        return " ".join(text(v) for v in value)
    return str(value)


def imap(host, port, user, password, tries=1):
    result = {"ok": False, "error": None, "errors": [], "tries": 0, "closed": False, "subjects": []}
    conn = imaplib.IMAP4(host, int(port), timeout=TIMEOUT)
    try:
        for i in range(tries):
            result["tries"] += 1
            try:
                conn.login(user, password if tries == 1 else f"{password}-{i + 1}")
                result["ok"] = True
                break
            except (imaplib.IMAP4.abort, OSError, EOFError) as e:
                result["error"] = text(e.args)
                result["closed"] = True
                break
            except imaplib.IMAP4.error as e:
                result["error"] = text(e.args)
                result["errors"].append(result["error"])
        if result["ok"]:
            conn.select("INBOX", readonly=True)
            _, data = conn.search(None, "ALL")
            for num in data[0].split():
                _, parts = conn.fetch(num, "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
                header = email.message_from_bytes(parts[0][1], policy=email.policy.default)
                result["subjects"].append(str(header["subject"]))
            conn.logout()
        elif not result["closed"]:
            # A refusal without Auth-Wait makes nginx close the connection.
            try:
                conn.noop()
            except (imaplib.IMAP4.abort, OSError, EOFError):
                result["closed"] = True
            except imaplib.IMAP4.error:
                pass
    finally:
        try:
            conn.shutdown()
        except OSError:
            pass
    return result


def pop3(host, port, user, password):
    result = {"ok": False, "error": None, "count": None}
    conn = poplib.POP3(host, int(port), timeout=TIMEOUT)
    try:
        conn.user(user)
        conn.pass_(password)
        result["ok"] = True
        result["count"] = conn.stat()[0]
        conn.quit()
    except poplib.error_proto as e:
        result["error"] = text(e.args)
    finally:
        conn.close()
    return result


def smtp(host, port, user, password, to, subject):
    result = {"ok": False, "error": None, "code": None}
    conn = smtplib.SMTP(host, int(port), timeout=TIMEOUT)
    try:
        conn.ehlo("client.fedgate.test")
        # AUTH PLAIN only: login() would go on to LOGIN after a refusal,
        # a second attempt on a connection nginx may have closed.
        conn.user, conn.password = user, password
        conn.auth("PLAIN", conn.auth_plain)
        message = (
            f"From: {user}\r\nTo: {to}\r\nSubject: {subject}\r\n\r\n"
            "Sent through nginx's mail proxy.\r\n"
        )
        conn.sendmail(user, [to], message)
        result["ok"] = True
        result["code"] = 250
        conn.quit()
    except smtplib.SMTPResponseException as e:
        result["code"] = e.smtp_code
        result["error"] = text(e.smtp_error)
    except (smtplib.SMTPException, OSError) as e:
        result["error"] = text(e.args)
    finally:
        conn.close()
    return result


def main(argv):
    command, args = argv[1], argv[2:]
    if command == "imap":
        tries = 1
        if "--tries" in args:
            i = args.index("--tries")
            tries = int(args[i + 1])
            args = args[:i] + args[i + 2:]
        out = imap(*args, tries=tries)
    elif command == "pop3":
        out = pop3(*args)
    elif command == "smtp":
        out = smtp(*args)
    else:
        raise SystemExit(f"unknown command {command}")
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    socket.setdefaulttimeout(TIMEOUT)
    main(sys.argv)
