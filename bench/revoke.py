"""Helpers of bench/revoke.sh: the directory's users as LDIF, the app
passwords (created and signed in once through the admin API), the timed
trials, and their percentiles. Python's standard library only, so that
one keep-alive connection can poll fedgate every few milliseconds, which
starting curl for each request could not.

Run by bench/revoke.sh; not a benchmark of its own.
"""

import argparse
import base64
import http.client
import json
import random
import subprocess
import sys
import time
import urllib.parse


def ldif(args):
    """inetOrgPerson users user1..userN, each last changed at its own time,
    5 minutes apart and ending a day ago: an incremental pass, whose mark is
    inclusive, then reads again only the newest entry, not every entry that
    slapadd would stamp with the second of the load."""
    end = int(time.time()) - 86400
    out = sys.stdout
    for i in range(1, args.users + 1):
        stamp = time.strftime("%Y%m%d%H%M%SZ", time.gmtime(end - (args.users - i) * 300))
        out.write(
            f"dn: uid=user{i},{args.people}\n"
            "objectClass: inetOrgPerson\n"
            f"uid: user{i}\ncn: User {i}\nsn: {i}\ndisplayName: User {i}\n"
            f"mail: user{i}@example.com\n"
            f"userPassword: {args.password_hash}\n"
            f"createTimestamp: {stamp}\nmodifyTimestamp: {stamp}\n\n"
        )


class Client:
    """Requests on one keep-alive connection, made again when closed."""

    def __init__(self, url, timeout=5):
        u = urllib.parse.urlsplit(url)
        self.host, self.port, self.timeout = u.hostname, u.port, timeout
        self.conn = None

    def request(self, method, path, headers=None, body=None):
        for attempt in (0, 1):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                self.conn.request(method, path, body=body, headers=headers or {})
                resp = self.conn.getresponse()
                data = resp.read()
                if resp.getheader("connection", "").lower() == "close":
                    self.close()
                return resp.status, data
            except (http.client.HTTPException, OSError):
                self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def basic(upn, password):
    token = base64.b64encode(f"{upn}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def setup(args):
    """Creates one app password per user and signs in with it once, so every
    trial starts from a credential in fedgate's verified-credential cache."""
    with open(args.token_file) as f:
        token = f.read().split()[1]
    admin = Client(args.admin)
    proxy = Client(args.fedgate)
    upns = [line.strip() for line in open(args.upns) if line.strip()]
    # The sync may still be bringing users in (a push refresh applies them
    # as they come): an unknown user is asked again until the deadline.
    deadline = time.monotonic() + args.wait
    with open(args.out, "w") as out:
        for upn in upns:
            while True:
                status, body = admin.request(
                    "POST",
                    f"/api/v1/users/{urllib.parse.quote(upn)}/app-passwords",
                    headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
                    body=json.dumps({"name": "phone"}),
                )
                if status != 404 or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            if status != 201:
                sys.exit(f"creating the app password of {upn} answered {status}: {body[:300]!r}")
            password = json.loads(body)["password"]
            status, _ = proxy.request("GET", "/", headers=basic(upn, password))
            if status != 200:
                sys.exit(f"the first sign-in of {upn} with its new app password answered {status}")
            out.write(f"{upn}\t{password}\n")


def ldap_write(args, ldif_text=None, delete_dn=None):
    """One directory write as the directory's administrator (slapd's rootdn,
    AD's domain administrator); returns when the tool has exited, that is,
    when the server has acknowledged the write. LDAPS needs LDAPTLS_CACERT
    in the environment."""
    auth = ["-x", "-H", args.ldap_uri, "-D", args.admin_dn, "-y", args.admin_pw]
    if delete_dn is not None:
        cmd, stdin = ["ldapdelete", *auth, delete_dn], None
    else:
        cmd, stdin = ["ldapmodify", *auth], ldif_text
    out = subprocess.run(cmd, input=stdin, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{cmd[0]} exited {out.returncode}: {out.stderr.strip()}")


def trials(args):
    """Per trial: a random pause (so that writes fall anywhere within a poll
    interval), a check that the user's app password is accepted, the write
    (t0 when the tool returns), then a sign-in every --poll-ms until one is
    refused with 401 (t1 when that answer arrived) or --timeout passes."""
    creds = [line.rstrip("\n").split("\t") for line in open(args.creds) if line.strip()]
    wanted = args.disables + args.renames + args.deletes
    if len(creds) < wanted:
        sys.exit(f"{wanted} trials need as many users, the credentials file has {len(creds)}")
    kinds = ["disable"] * args.disables + ["rename"] * args.renames + ["delete"] * args.deletes
    plan = list(zip(kinds, creds))
    rng = random.Random(args.seed)
    rng.shuffle(plan)
    proxy = Client(args.fedgate)
    poll = args.poll_ms / 1000
    with open(args.out, "a") as out:
        for kind, (upn, password) in plan:
            time.sleep(rng.uniform(0, args.jitter_ms / 1000))
            row = trial(args, proxy, kind, upn, password, poll)
            out.write("\t".join([args.mode, kind, upn, *row]) + "\n")
            out.flush()


def writes(directory, local, renamed):
    """The user's DN and the LDIF of a disable and of a rename on one
    directory: slapd (a ppolicy lock; `mail` is the UPN) or AD
    (ACCOUNTDISABLE in userAccountControl; userPrincipalName)."""
    if directory == "ad":
        return (f"CN={local}", "replace: userAccountControl\nuserAccountControl: 546\n",
                f"replace: userPrincipalName\nuserPrincipalName: {renamed}\n")
    return (f"uid={local}", "add: pwdAccountLockedTime\npwdAccountLockedTime: 000001010000Z\n",
            f"replace: mail\nmail: {renamed}\n")


def trial(args, proxy, kind, upn, password, poll):
    local, domain = upn.split("@", 1)
    renamed = f"renamed-{local}@{domain}"
    rdn, disable, rename = writes(args.directory, local, renamed)
    dn = f"{rdn},{args.people}"
    status, _ = proxy.request("GET", "/", headers=basic(upn, password))
    if status != 200:
        return ["error", "", "", "0", f"answered {status} before the write"]
    try:
        started = time.perf_counter()
        if kind == "disable":
            ldap_write(args, f"dn: {dn}\nchangetype: modify\n{disable}")
        elif kind == "rename":
            ldap_write(args, f"dn: {dn}\nchangetype: modify\n{rename}")
        else:
            ldap_write(args, delete_dn=dn)
        t0 = time.perf_counter()
    except RuntimeError as err:
        return ["error", "", "", "0", f"directory write failed: {err}"]
    write_ms = f"{(t0 - started) * 1e3:.1f}"
    polls, seen = 0, set()
    deadline = t0 + args.timeout
    next_at = t0
    while True:
        polls += 1
        status, _ = proxy.request("GET", "/", headers=basic(upn, password))
        answered = time.perf_counter()
        if status == 401:
            break
        seen.add(status)
        if answered >= deadline:
            detail = "still answered " + ",".join(str(s) for s in sorted(seen))
            return ["timeout", "", write_ms, str(polls), detail]
        next_at += poll
        if next_at > answered:
            time.sleep(next_at - answered)
        else:
            next_at = answered
    detail = "" if seen <= {200} else "also answered " + ",".join(str(s) for s in sorted(seen))
    if kind == "rename":
        # A rename keeps the user and their app passwords: the new name signs
        # in with the same one.
        status, _ = proxy.request("GET", "/", headers=basic(renamed, password))
        detail = (detail + " " if detail else "") + f"new name answered {status}"
    return ["refused", f"{(answered - t0) * 1e3:.1f}", write_ms, str(polls), detail]


def percentile(values, p):
    """Nearest rank."""
    if not values:
        return None
    values = sorted(values)
    k = max(1, -(-len(values) * p // 100))
    return values[int(k) - 1]


KINDS = ["disable", "rename", "delete"]


def stats(args):
    """One line per mode and kind: mode, kind, trials, refused, p50, p99,
    max (ms), the median time of the write itself (ms), failures, and why
    they failed."""
    rows = {}
    for line in open(args.results):
        f = line.rstrip("\n").split("\t")
        rows.setdefault((f[0], f[1]), []).append(f)
    for (mode, kind), rs in sorted(rows.items(), key=lambda kv: (kv[0][0], KINDS.index(kv[0][1]))):
        ms = [float(r[4]) for r in rs if r[3] == "refused"]
        writes = [float(r[5]) for r in rs if r[5]]
        fails = [r for r in rs if r[3] != "refused"]
        fmt = lambda v: "n/a" if v is None else f"{v:.0f}"
        why = sorted({r[7] for r in fails})
        print("\t".join([mode, kind, str(len(rs)), str(len(ms)), fmt(percentile(ms, 50)),
                         fmt(percentile(ms, 99)), fmt(max(ms) if ms else None),
                         fmt(percentile(writes, 50)), str(len(fails)), "; ".join(why)]))


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("ldif")
    a.add_argument("--users", type=int, required=True)
    a.add_argument("--people", required=True)
    a.add_argument("--password-hash", required=True)
    a = sub.add_parser("setup")
    for k in ("admin", "token-file", "fedgate", "upns", "out"):
        a.add_argument(f"--{k}", required=True)
    a.add_argument("--wait", type=float, default=60)
    a = sub.add_parser("trials")
    for k in ("mode", "fedgate", "ldap-uri", "admin-dn", "admin-pw", "people", "creds", "out"):
        a.add_argument(f"--{k}", required=True)
    a.add_argument("--directory", choices=["slapd", "ad"], default="slapd")
    for k in ("disables", "renames", "deletes", "seed"):
        a.add_argument(f"--{k}", type=int, required=True)
    for k in ("timeout", "poll-ms", "jitter-ms"):
        a.add_argument(f"--{k}", type=float, required=True)
    a = sub.add_parser("stats")
    a.add_argument("--results", required=True)
    args = p.parse_args()
    {"ldif": ldif, "setup": setup, "trials": trials, "stats": stats}[args.cmd](args)


if __name__ == "__main__":
    main()
