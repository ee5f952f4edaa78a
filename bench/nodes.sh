#!/usr/bin/env bash
# Several nodes benchmark: two fedgate nodes on one PostgreSQL store behind
# haproxy against one fedgate node on SQLite, on the same machine in one
# run:
#   (a) warm app-password sign-ins (the credential is in each node's
#       cache): one PostgreSQL node directly, the SQLite node directly, and
#       the two PostgreSQL nodes through haproxy (in total and per node);
#   (b) cold sign-ins (the cache off, `[auth] cache_max_entries = 0`, so
#       every sign-in costs one argon2id verification), the same three ways;
#   (c) cross-node revocation: an app password made with node A's command
#       line, warm on node B, deleted with A's command line; the time from
#       the delete command returning until B answers 401.
#
# The warm path touches no store, so a PostgreSQL node should sign in as
# fast as the SQLite node; the figure checks it. The PostgreSQL server is a
# private cluster made with initdb in the work dir on a free loopback port,
# with the durability settings of a production server (fsync and
# synchronous commits on); the system's cluster and service are never used.
# haproxy runs in the foreground with its config in the work dir; the
# system's service is never used either.
#
# Everything runs on 127.0.0.1 in one script, alternating targets within
# each round, because runs on a shared small machine swing by tens of
# percent and only same-run ratios are meaningful.
#
# Usage: bench/nodes.sh   (or scripts/bench nodes)
# Environment: ROUNDS (default 3), REVOCATIONS (default 200),
# CARGO_TARGET_DIR, BENCH_KEEP=1 keeps the work dir with configs and logs.
set -euo pipefail

BENCH_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib.sh
. "$BENCH_ROOT/bench/lib.sh"

bench_rounds
REVOCATIONS=${REVOCATIONS:-200}
case $REVOCATIONS in
'' | *[!0-9]* | 0) bench_die "REVOCATIONS must be a positive integer, got '$REVOCATIONS'" ;;
esac

RESULTS=$BENCH_ROOT/bench/RESULTS.md
SECTION_FILE=$BENCH_ROOT/bench/results/nodes.md
REPRO='scripts/bench nodes'

# Cold runs wait on argon2 (one verification at a time per node on this
# machine's default `hash_workers`); fewer connections keep their latency
# figures about the hash and not about a queue.
COLD_CONNS=16
# A PostgreSQL node's warm sign-ins against the SQLite node's.
TARGET_PG_VS_SQLITE=0.95
# DESIGN.md: every node enforces a revocation within 1 s (goal 100 ms).
REVOCATION_LIMIT_MS=1000
REVOCATION_GOAL_MS=100
# How long the revocation loop may take in all; it stops early, and says
# so, rather than outlast the run.
REVOCATION_BUDGET_S=240

BENCH_USER=bench@contoso.example
# The revocation loop's own user, so its app passwords come and go without
# touching the one the load runs sign in with.
REVOKE_USER=revoke@contoso.example

# nginx and haproxy are installed under /usr/sbin, which a non-login shell
# may lack.
PATH=$PATH:/usr/sbin:/sbin

bench_need 'nginx:nginx-light|nginx' wrk:wrk curl:curl haproxy:haproxy python3:python3-minimal \
    base64:coreutils setpriv:util-linux

# pg_bindir: the directory of initdb and postgres (Debian puts them in
# /usr/lib/postgresql/VERSION/bin, off PATH): `pg_config --bindir` when it
# has them, else the newest version there.
pg_bindir() {
    local dir
    dir=$(pg_config --bindir 2>/dev/null || true)
    if [ -z "$dir" ] || [ ! -x "$dir/initdb" ] || [ ! -x "$dir/postgres" ]; then
        dir=$(for d in /usr/lib/postgresql/*/bin; do
            [ -x "$d/initdb" ] && [ -x "$d/postgres" ] && echo "$d"
        done | sort -V | tail -n 1)
    fi
    [ -n "$dir" ] && echo "$dir"
}
# The package is installed the way the tests need it (no cluster of its
# own, no service started), which scripts/install-test-deps knows.
PG_BIN=$(pg_bindir) ||
    bench_die "no PostgreSQL server programs (initdb, postgres): run scripts/install-test-deps (package postgresql)"

bench_build_fedgate

bench_init
W=$BENCH_WORKDIR
# fedgate resolves relative paths against its working directory; starting
# everything from the work dir keeps any such file out of the repository.
cd "$W"

# Set by bench_free_port (through printf -v).
UP_PORT='' PG_PORT='' LB_PORT='' LBC_PORT='' STATS_PORT=''
bench_free_port UP_PORT
bench_free_port PG_PORT
bench_free_port LB_PORT
bench_free_port LBC_PORT
bench_free_port STATS_PORT
# The fedgate nodes: warm and cold, on SQLite and on PostgreSQL (A and B).
NODES=(sq a b sqc ac bc)
declare -A NODE_PORT NODE_ADMIN NODE_PID
for n in "${NODES[@]}"; do
    bench_free_port "NODE_PORT[$n]"
    bench_free_port "NODE_ADMIN[$n]"
done

# --- PostgreSQL: a private cluster ------------------------------------------------
# initdb refuses to run as root and postgres to start as root: as root both
# run as the `postgres` system user (made by Debian's postgresql package).
as_pg=()
if [ "$(id -u)" -eq 0 ]; then
    id postgres >/dev/null 2>&1 || bench_die "running as root needs the postgres system user (package postgresql)"
    as_pg=(setpriv --reuid=postgres --regid=postgres --clear-groups --)
fi
PG_DIR=$W/pg
mkdir -m 0700 "$PG_DIR" "$PG_DIR/socket"
PG_SUPER_PW=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
PG_PW=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
(umask 077 && printf '%s\n' "$PG_SUPER_PW" >"$PG_DIR/superuser-password")
(umask 077 && printf '%s\n' "$PG_PW" >"$W/store-password")
[ "${#as_pg[@]}" -eq 0 ] || chown -R postgres:postgres "$PG_DIR"
bench_log "initdb ($("$PG_BIN/postgres" --version))"
# Durable as in production: no -N (fsync stays on).
"${as_pg[@]}" "$PG_BIN/initdb" -D "$PG_DIR/data" --auth=scram-sha-256 --username=postgres \
    --pwfile="$PG_DIR/superuser-password" --encoding=UTF8 --locale=C >"$W/initdb.log" 2>&1 ||
    bench_die "initdb failed: $(tail -n 20 "$W/initdb.log")"
rm -f "$PG_DIR/superuser-password"
PG_SETTINGS=(listen_addresses=127.0.0.1 fsync=on synchronous_commit=on full_page_writes=on)
pg_args=()
for s in "${PG_SETTINGS[@]}"; do pg_args+=(-c "$s"); done
bench_spawn "$W/postgres.log" "${as_pg[@]}" "$PG_BIN/postgres" -D "$PG_DIR/data" -p "$PG_PORT" \
    -k "$PG_DIR/socket" "${pg_args[@]}"
PG_PID=$BENCH_LAST_PID
pg_sql() {
    PGPASSWORD=$PG_SUPER_PW PGCONNECT_TIMEOUT=5 "$PG_BIN/psql" -X -q -A -t -v ON_ERROR_STOP=1 \
        -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -c "$1"
}
for ((i = 0; i < 300; i++)); do
    bench_alive "$PG_PID" || bench_die "postgres exited on start: $(tail -n 20 "$W/postgres.log")"
    "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" -t 1 && break
    sleep 0.1
done
"$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" -t 1 || bench_die "postgres not ready on port $PG_PORT"
pg_sql "CREATE ROLE fedgate LOGIN PASSWORD '$PG_PW'" >/dev/null || bench_die "creating the role fedgate failed"
pg_sql "CREATE DATABASE fedgate OWNER fedgate" >/dev/null || bench_die "creating the database failed"
PG_SHOWN=$(pg_sql "SELECT string_agg(name || '=' || current_setting(name), ', ' ORDER BY name) FROM pg_settings
    WHERE name IN ('fsync', 'synchronous_commit', 'full_page_writes', 'shared_buffers', 'max_connections', 'wal_level')")
bench_log "postgres ready on port $PG_PORT: $PG_SHOWN"

# --- upstream: nginx answering from memory --------------------------------------
bench_upstream_start "$UP_PORT"
UP_PID=$BENCH_LAST_PID

# --- fedgate nodes -----------------------------------------------------------------
# node_config NODE STORE_LINES AUTH_LINES: every node has the same config
# but for its store and, for the cold ones, the cache.
node_config() {
    local n=$1 store=$2 auth=$3
    cat >"$W/$n.toml" <<EOF
[server]
listen = []
listen_plain = ["127.0.0.1:${NODE_PORT[$n]}"]
tls_cert = "$W/cert.pem"
tls_key = "$W/key.pem"
# haproxy names the client in X-Forwarded-For (option forwardfor).
trusted_proxies = ["127.0.0.1"]

[store]
$store

[auth]
# A refusal is answered at once, so the revocation figures time the
# revocation and not the anti-spraying delay (1 s by default).
failure_delay = "0s"
$auth

# The revocation loop polls with one app password until it is refused, 200
# times over, from one address: lockout would end the loop, not measure it.
[lockout]
threshold = 0

[admin]
listen = "127.0.0.1:${NODE_ADMIN[$n]}"

[[route]]
path = "/"
upstream = "http://127.0.0.1:$UP_PORT"
realm = "cloud"
EOF
}
SQLITE_STORE="url = \"sqlite://$W/sqlite/fedgate.db\"
key_file = \"$W/sqlite/fedgate.key\""
PG_STORE="url = \"postgres://fedgate@127.0.0.1:$PG_PORT/fedgate\"
password_file = \"$W/store-password\"
key_file = \"$W/pg.key\""
COLD_AUTH='# Nothing is cached: every sign-in costs one argon2id verification.
cache_max_entries = 0'
mkdir -p "$W/sqlite"
node_config sq "$SQLITE_STORE" ""
node_config sqc "$SQLITE_STORE" "$COLD_AUTH"
for n in a b; do node_config "$n" "$PG_STORE" ""; done
for n in ac bc; do node_config "$n" "$PG_STORE" "$COLD_AUTH"; done

# fg_cli NODE ARGS...: the command line against NODE's store.
fg_cli() {
    local n=$1
    shift
    "$FEDGATE" --config "$W/$n.toml" "$@" 2>>"$W/fedgate-admin.log"
}
# Each store: created, the user in MFA state enforced (a Basic client must
# use an app password, the sign-in measured here), app passwords allowed.
# The PostgreSQL one also gets the revocation loop's user.
declare -A APP_PW
for n in sq a; do
    fg_cli "$n" store init >>"$W/fedgate-admin.log" || bench_die "fedgate store init ($n) failed"
    fg_cli "$n" user add "$BENCH_USER" --state enforced >>"$W/fedgate-admin.log" ||
        bench_die "fedgate user add ($n) failed"
    fg_cli "$n" settings set allow-app-passwords true >>"$W/fedgate-admin.log" ||
        bench_die "fedgate settings set ($n) failed"
    created=$(fg_cli "$n" app-password create "$BENCH_USER" --name wrk --json) ||
        bench_die "fedgate app-password create ($n) failed"
    # The JSON is pretty-printed; pick the one "password" field.
    APP_PW[$n]=$(printf '%s\n' "$created" | sed -n 's/^[[:space:]]*"password":[[:space:]]*"\([^"]*\)".*/\1/p')
    [ -n "${APP_PW[$n]}" ] || bench_die "no password in app-password create output: $created"
done
fg_cli a user add "$REVOKE_USER" --state enforced >>"$W/fedgate-admin.log" ||
    bench_die "fedgate user add $REVOKE_USER failed"

bench_log "starting fedgate nodes: ${NODES[*]}"
for n in "${NODES[@]}"; do
    bench_spawn "$W/fedgate-$n.log" "$FEDGATE" --log-format json serve --config "$W/$n.toml"
    NODE_PID[$n]=$BENCH_LAST_PID
done
basic() { printf '%s' "$1" | base64 -w0; }
declare -A AUTH_OF
for n in sq sqc; do AUTH_OF[$n]="Authorization: Basic $(basic "$BENCH_USER:${APP_PW[sq]}")"; done
for n in a b ac bc; do AUTH_OF[$n]="Authorization: Basic $(basic "$BENCH_USER:${APP_PW[a]}")"; done
for n in "${NODES[@]}"; do
    bench_wait_http_with "fedgate $n" "http://127.0.0.1:${NODE_PORT[$n]}/" "${NODE_PID[$n]}" 300 ok \
        -H "${AUTH_OF[$n]}" || bench_die "fedgate $n did not start or refused the app password"
done
# A node that let anyone in would measure nothing.
for n in "${NODES[@]}"; do
    code=$(curl -sS -o /dev/null -w '%{http_code}' --max-time 5 -u "$BENCH_USER:Winter2026!" \
        "http://127.0.0.1:${NODE_PORT[$n]}/" 2>/dev/null || echo 000)
    [ "$code" = 401 ] || bench_die "fedgate $n answered $code, not 401, to a wrong password"
done

# --- haproxy ------------------------------------------------------------------------
# One frontend for the warm nodes (a, b) and one for the cold ones (ac, bc),
# set up as in the load-balancer integration test (tests/it/lb.rs), plus
# connection reuse towards the nodes, and a stats page the runs read the
# per-node counts from.
haproxy_backend() {
    local name=$1 n1=$2 n2=$3
    cat <<EOF
backend $name
    balance roundrobin
    http-request disable-l7-retry unless METH_GET
    option httpchk
    http-check send meth GET uri /readyz ver HTTP/1.1 hdr Host localhost
    http-check expect status 200
    default-server inter 1s fall 2 rise 2
    server a 127.0.0.1:${NODE_PORT[$n1]} check port ${NODE_ADMIN[$n1]}
    server b 127.0.0.1:${NODE_PORT[$n2]} check port ${NODE_ADMIN[$n2]}

EOF
}
{
    cat <<EOF
global
    maxconn 4096

defaults
    mode http
    timeout connect 1s
    timeout client 30s
    timeout server 30s
    timeout check 2s
    retries 3
    option redispatch 1
    retry-on conn-failure empty-response response-timeout
    # fedgate ties nothing to a connection, so a connection to a node may
    # carry any client's requests.
    http-reuse always

frontend warm
    bind 127.0.0.1:$LB_PORT
    option forwardfor
    default_backend warm

frontend cold
    bind 127.0.0.1:$LBC_PORT
    option forwardfor
    default_backend cold

listen stats
    bind 127.0.0.1:$STATS_PORT
    stats enable
    stats uri /stats

EOF
    haproxy_backend warm a b
    haproxy_backend cold ac bc
} >"$W/haproxy.cfg"
haproxy -c -q -f "$W/haproxy.cfg" >"$W/haproxy-check.log" 2>&1 ||
    bench_die "haproxy config is invalid: $(cat "$W/haproxy-check.log")"
bench_spawn "$W/haproxy.log" haproxy -db -f "$W/haproxy.cfg"
HAPROXY_PID=$BENCH_LAST_PID

# lb_stat BACKEND COLUMN: "SERVER VALUE" lines for the servers of BACKEND
# from haproxy's CSV stats.
lb_stat() {
    curl -fsS --max-time 5 "http://127.0.0.1:$STATS_PORT/stats;csv" | awk -F, -v be="$1" -v want="$2" '
        NR == 1 { sub(/^# /, ""); for (i = 1; i <= NF; i++) col[$i] = i; next }
        $1 == be && $2 != "BACKEND" && $2 != "FRONTEND" { print $2, $col[want] }'
}
for ((i = 0; i < 100; i++)); do
    bench_alive "$HAPROXY_PID" || bench_die "haproxy exited on start: $(tail -n 20 "$W/haproxy.log")"
    up=$( (lb_stat warm status; lb_stat cold status) 2>/dev/null | grep -c ' UP$' || true)
    [ "$up" -eq 4 ] && break
    sleep 0.1
done
[ "$up" -eq 4 ] || bench_die "haproxy does not see all four nodes up: $(lb_stat warm status; lb_stat cold status)"
bench_wait_http_with "haproxy (warm)" "http://127.0.0.1:$LB_PORT/" "$HAPROXY_PID" 100 ok -H "${AUTH_OF[a]}" ||
    bench_die "haproxy (warm) did not sign in"
bench_wait_http_with "haproxy (cold)" "http://127.0.0.1:$LBC_PORT/" "$HAPROXY_PID" 100 ok -H "${AUTH_OF[a]}" ||
    bench_die "haproxy (cold) did not sign in"

# --- load runs ---------------------------------------------------------------------
RUNS=(sqlite pg lb cold-sqlite cold-pg cold-lb)
declare -A LABEL=(
    [sqlite]="SQLite node, directly"
    [pg]="PostgreSQL node A, directly"
    [lb]="haproxy to PostgreSQL nodes A and B"
    [cold-sqlite]="SQLite node, directly"
    [cold-pg]="PostgreSQL node A, directly"
    [cold-lb]="haproxy to PostgreSQL nodes A and B"
)
declare -A URL_OF=(
    [sqlite]=http://127.0.0.1:${NODE_PORT[sq]}/
    [pg]=http://127.0.0.1:${NODE_PORT[a]}/
    [lb]=http://127.0.0.1:$LB_PORT/
    [cold-sqlite]=http://127.0.0.1:${NODE_PORT[sqc]}/
    [cold-pg]=http://127.0.0.1:${NODE_PORT[ac]}/
    [cold-lb]=http://127.0.0.1:$LBC_PORT/
)
declare -A HEADER_OF=(
    [sqlite]=${AUTH_OF[sq]} [pg]=${AUTH_OF[a]} [lb]=${AUTH_OF[a]}
    [cold-sqlite]=${AUTH_OF[sq]} [cold-pg]=${AUTH_OF[a]} [cold-lb]=${AUTH_OF[a]}
)
# The fedgate processes each run loads (their CPU is the run's fedgate CPU).
declare -A LOADED=(
    [sqlite]=sq [pg]=a [lb]="a b" [cold-sqlite]=sqc [cold-pg]=ac [cold-lb]="ac bc"
)
SERVER_NAMES=(postgres upstream haproxy "${NODES[@]}")
SERVER_PIDS=("$PG_PID" "$UP_PID" "$HAPROXY_PID")
for n in "${NODES[@]}"; do SERVER_PIDS+=("${NODE_PID[$n]}"); done
declare -A RPS P50 P99 ERR CPU_US HA_US PER_A PER_B ARGON CPU_ROW
CLK=$(bench_clk_tck)
LOAD_BEFORE=$(bench_loadavg)

check_alive() {
    local i
    for i in "${!SERVER_PIDS[@]}"; do
        bench_alive "${SERVER_PIDS[i]}" ||
            bench_die "${SERVER_NAMES[i]} (pid ${SERVER_PIDS[i]}) died during the run against $1"
    done
}

# metric_sum NODE NAME: a counter of NODE's /metrics, summed over labels.
metric_sum() {
    curl -fsS --max-time 5 "http://127.0.0.1:${NODE_ADMIN[$1]}/metrics" |
        awk -v m="$2" '{ n = $1; sub(/\{.*/, "", n) } n == m { s += $NF } END { printf "%d\n", s }'
}

# run_one ROUND TARGET
run_one() {
    local r=$1 t=$2 url out conns rps p50 p99 err wu ws n i total=0 fg_ticks=0 argon_before=0 argon_after=0
    local -a before after
    local -A hb ha
    url=${URL_OF[$t]}
    out=$W/wrk-$r-$t.txt
    conns=$BENCH_WRK_CONNS
    case $t in cold-*) conns=$COLD_CONNS ;; esac
    bench_wrk_warmup "$url" -c"$conns" -H "${HEADER_OF[$t]}"
    case $t in
    *lb)
        local be=warm
        [ "$t" = cold-lb ] && be=cold
        while read -r n v; do hb[$n]=$v; done < <(lb_stat "$be" hrsp_2xx)
        ;;
    esac
    for n in ${LOADED[$t]}; do argon_before=$((argon_before + $(metric_sum "$n" fedgate_argon2_total))); done
    mapfile -t before < <(bench_cpu_ticks "${SERVER_PIDS[@]}")
    bench_wrk_sized "$BENCH_WRK_THREADS" "$conns" "$BENCH_WRK_DURATION" "$url" "$out" -H "${HEADER_OF[$t]}"
    mapfile -t after < <(bench_cpu_ticks "${SERVER_PIDS[@]}")
    for n in ${LOADED[$t]}; do argon_after=$((argon_after + $(metric_sum "$n" fedgate_argon2_total))); done
    check_alive "$t"
    read -r rps p50 p99 err < <(bench_wrk_parse "$out") ||
        bench_die "could not parse wrk output for $t: $(cat "$out")"
    RPS[$r,$t]=$rps P50[$r,$t]=$p50 P99[$r,$t]=$p99 ERR[$r,$t]=$err
    total=$(awk '/requests in/ { print $1; exit }' "$out")
    # CPU of the loaded fedgate nodes and of haproxy, per request.
    for i in "${!SERVER_NAMES[@]}"; do
        for n in ${LOADED[$t]}; do
            [ "${SERVER_NAMES[i]}" = "$n" ] && fg_ticks=$((fg_ticks + after[i] - before[i]))
        done
    done
    CPU_US[$r,$t]=$(awk -v c="$fg_ticks" -v clk="$CLK" -v n="$total" 'BEGIN { printf "%.1f", n ? c / clk / n * 1e6 : 0 }')
    HA_US[$r,$t]=$(awk -v c="$((after[2] - before[2]))" -v clk="$CLK" -v n="$total" 'BEGIN { printf "%.1f", n ? c / clk / n * 1e6 : 0 }')
    ARGON[$r,$t]=$(awk -v a="$((argon_after - argon_before))" -v n="$total" 'BEGIN { printf "%.2f", n ? a / n : 0 }')
    read -r wu ws <"$out.cpu"
    CPU_ROW[$r,$t]=$(awk -v u="$wu" -v s="$ws" 'BEGIN { printf "%.1f", u + s }')
    for i in "${!SERVER_PIDS[@]}"; do
        CPU_ROW[$r,$t]+=" | $(awk -v d="$((after[i] - before[i]))" -v clk="$CLK" 'BEGIN { printf "%.1f", d / clk }')"
    done
    PER_A[$r,$t]='' PER_B[$r,$t]=''
    case $t in
    *lb)
        while read -r n v; do ha[$n]=$v; done < <(lb_stat "$be" hrsp_2xx)
        local da=$((ha[a] - hb[a])) db=$((ha[b] - hb[b]))
        # wrk's rate split by the share each node answered.
        PER_A[$r,$t]=$(awk -v r="$rps" -v a="$da" -v b="$db" 'BEGIN { printf "%.2f", a + b ? r * a / (a + b) : 0 }')
        PER_B[$r,$t]=$(awk -v r="$rps" -v a="$da" -v b="$db" 'BEGIN { printf "%.2f", a + b ? r * b / (a + b) : 0 }')
        ;;
    esac
    bench_log "  $t: $rps req/s (${PER_A[$r,$t]:-} ${PER_B[$r,$t]:-}), p50 $p50 ms, p99 $p99 ms," \
        "errors $err, fedgate ${CPU_US[$r,$t]} us/req, argon2/req ${ARGON[$r,$t]}"
    [ "$err" -eq 0 ] || bench_log "  WARNING: $t had $err socket errors or non-2xx answers"
}

for ((r = 1; r <= ROUNDS; r++)); do
    # Rotate the order each round so no target always runs first or last.
    for ((k = 0; k < ${#RUNS[@]}; k++)); do
        t=${RUNS[(k + r - 1) % ${#RUNS[@]}]}
        bench_log "round $r/$ROUNDS: $t"
        run_one "$r" "$t"
    done
done

# --- cross-node revocation ---------------------------------------------------------
# One loop in Python, so that B is polled on one keep-alive connection every
# millisecond and not at the pace of starting curl.
cat >"$W/revoke.py" <<'EOF'
import base64, http.client, json, subprocess, sys, time

fedgate, config_a, port_b, user, count, budget, limit_ms = sys.argv[1:8]
count, budget, limit = int(count), float(budget), int(limit_ms) / 1000
POLL = 0.001


class Node:
    """Sign-ins on one keep-alive connection, made again when closed."""

    def __init__(self, port):
        self.port = int(port)
        self.conn = None

    def status(self, password):
        auth = base64.b64encode(f"{user}:{password}".encode()).decode()
        for attempt in (0, 1):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
            try:
                self.conn.request("GET", "/", headers={"Authorization": f"Basic {auth}"})
                resp = self.conn.getresponse()
                resp.read()
                if resp.getheader("connection", "").lower() == "close":
                    self.conn.close()
                    self.conn = None
                return resp.status
            except (http.client.HTTPException, OSError):
                self.conn.close()
                self.conn = None
                if attempt:
                    raise


def cli(*args):
    out = subprocess.run([fedgate, "--config", config_a, *args], capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"fedgate {' '.join(args)} failed: {out.stderr}")
    return out.stdout


def wait_for(node, password, want, deadline):
    """Polls until answered `want`: when the request so answered was sent
    and when its answer came, and how many requests it took."""
    polls = 0
    while True:
        polls += 1
        sent = time.perf_counter()
        status = node.status(password)
        if status == want:
            return sent, time.perf_counter(), polls
        if status not in (200, 401) or time.perf_counter() > deadline:
            return None, None, polls
        time.sleep(POLL)


b = Node(port_b)
started = time.perf_counter()
for i in range(count):
    if time.perf_counter() - started > budget:
        print(f"stopped: budget of {budget:.0f} s spent after {i} revocations", flush=True)
        break
    name = f"revoke-{i}"
    password = json.loads(cli("--json", "app-password", "create", user, "--name", name))["password"]
    made = time.perf_counter()
    _, accepted, _ = wait_for(b, password, 200, made + 5)
    if accepted is None:
        sys.exit(f"node B did not accept the new app password {name} within 5 s")
    # Once more, now answered from B's cache: the delete must reach it.
    if b.status(password) != 200:
        sys.exit(f"node B refused {name} right after accepting it")
    t0 = time.perf_counter()
    cli("app-password", "delete", user, name)
    t1 = time.perf_counter()
    asked, refused, polls = wait_for(b, password, 401, t1 + 2 * limit)
    if refused is None:
        print(f"revocation {i} over {2 * limit:.1f} s", flush=True)
        continue
    ms = lambda d: f"{d * 1e3:.3f}"
    print(f"revocation {i} {ms(t1 - t0)} {ms(asked - t1)} {ms(refused - t1)} {ms(refused - t0)} "
          f"{ms(accepted - made)} {polls}", flush=True)
EOF
bench_log "revocations: $REVOCATIONS (create on A, warm on B, delete with A's command line, poll B)"
LOAD_REV=$(bench_loadavg)
REV_OUT=$W/revocations.txt
python3 "$W/revoke.py" "$FEDGATE" "$W/a.toml" "${NODE_PORT[b]}" "$REVOKE_USER" "$REVOCATIONS" \
    "$REVOCATION_BUDGET_S" "$REVOCATION_LIMIT_MS" >"$REV_OUT" 2>"$W/revoke-stderr.log" ||
    bench_die "the revocation loop failed: $(tail -n 5 "$W/revoke-stderr.log")"
check_alive revocations
REV_DONE=$(grep -c '^revocation [0-9]* [0-9]' "$REV_OUT" || true)
REV_SLOW=$(grep -c '^revocation [0-9]* over' "$REV_OUT" || true)
REV_STOPPED=$(grep '^stopped:' "$REV_OUT" || true)
# pct COLUMN P: the P-th percentile (nearest rank) of a column of the
# revocation lines, in ms.
pct() {
    awk -v c="$1" '$1 == "revocation" && $3 != "over" { print $c }' "$REV_OUT" | sort -g |
        awk -v p="$2" '{ v[NR] = $1 } END {
            if (NR == 0) { print "n/a"; exit }
            k = int(NR * p / 100); if (k < NR * p / 100) k++; if (k < 1) k = 1
            printf "%.1f\n", v[k] }'
}
rev_row() {
    echo "| $1 | $(pct "$2" 50) | $(pct "$2" 90) | $(pct "$2" 99) | $(pct "$2" 100) |"
}
REV_P99=$(pct 5 99)
REV_MAX=$(pct 5 100)
bench_log "revocations: $REV_DONE measured, $REV_SLOW over the limit; p50 $(pct 5 50) ms, p99 $REV_P99 ms, max $REV_MAX ms"
[ "$REV_DONE" -ge "$REVOCATIONS" ] || bench_log "WARNING: only $REV_DONE of $REVOCATIONS revocations measured"
NOTIFIED=$(metric_sum b fedgate_store_notifications_total)
CATCH_UPS=$(metric_sum b fedgate_view_catch_ups_total)

# --- report ---------------------------------------------------------------------------
declare -A MED_RPS MED_P50 MED_P99
bench_medians "${RUNS[@]}"
declare -A MED_CPU MED_HA MED_A MED_B MED_ARGON
for t in "${RUNS[@]}"; do
    vc=() vh=() va=() vb=() vg=()
    for ((r = 1; r <= ROUNDS; r++)); do
        vc+=("${CPU_US[$r,$t]}") vh+=("${HA_US[$r,$t]}") vg+=("${ARGON[$r,$t]}")
        va+=("${PER_A[$r,$t]:-0}") vb+=("${PER_B[$r,$t]:-0}")
    done
    MED_CPU[$t]=$(bench_median "${vc[@]}") MED_HA[$t]=$(bench_median "${vh[@]}")
    MED_A[$t]=$(bench_median "${va[@]}") MED_B[$t]=$(bench_median "${vb[@]}")
    MED_ARGON[$t]=$(bench_median "${vg[@]}")
done
RATIO_WARM=$(bench_ratio "${MED_RPS[pg]}" "${MED_RPS[sqlite]}")
RATIO_WARM_CPU=$(bench_ratio "${MED_CPU[pg]}" "${MED_CPU[sqlite]}")
RATIO_COLD=$(bench_ratio "${MED_RPS[cold-pg]}" "${MED_RPS[cold-sqlite]}")
RATIO_LB=$(bench_ratio "${MED_RPS[lb]}" "${MED_RPS[sqlite]}")
RATIO_COLD_LB=$(bench_ratio "${MED_RPS[cold-lb]}" "${MED_RPS[cold-sqlite]}")
ALL_ERR=0
for ((r = 1; r <= ROUNDS; r++)); do
    for t in "${RUNS[@]}"; do ALL_ERR=$((ALL_ERR + ERR[$r,$t])); done
done
FG_WARN=0 FG_ERROR=0
for n in "${NODES[@]}"; do
    FG_WARN=$((FG_WARN + $(grep -c '"level":"WARN"' "$W/fedgate-$n.log" || true)))
    FG_ERROR=$((FG_ERROR + $(grep -c '"level":"ERROR"' "$W/fedgate-$n.log" || true)))
done
# What the nodes complained about, by node and message, most frequent first.
FG_COMPLAINTS=$(for n in "${NODES[@]}"; do
    grep -E '"level":"(WARN|ERROR)"' "$W/fedgate-$n.log" |
        sed -n "s/.*\"level\":\"\([A-Z]*\)\".*\"message\":\"\([^\"]*\)\".*/$n \1 \2/p" || true
done | sort | uniq -c | sort -rn | head -n 5 | awk '{ c = $1; $1 = ""; printf "%s%s x%d", sep, substr($0, 2), c; sep = "; " }')
[ -z "$FG_COMPLAINTS" ] || bench_log "fedgate complained: $FG_COMPLAINTS"

mkdir -p "$(dirname "$SECTION_FILE")"
{
    echo "## Several nodes: two PostgreSQL nodes behind haproxy vs one SQLite node"
    echo
    cat <<EOF
Reproduce with \`$REPRO\` (\`ROUNDS=$ROUNDS\`, \`REVOCATIONS=$REVOCATIONS\`; the release build is part of it).
Each warm run: \`$(bench_wrk_cmd) -H "Authorization: Basic ..." URL\`
after a $BENCH_WARMUP warm-up with the same header; each cold run the same with
\`-c$COLD_CONNS\`. Keep-alive, all on 127.0.0.1, wrk, haproxy, PostgreSQL, the
upstream and six fedgate processes sharing the $(nproc) cores (only the
targets of a run get requests; the rest idle, polling their change feeds).
The upstream is one nginx (\`return 200 "ok\\n"\`, ${BENCH_NGINX_WORKERS:-2} workers). Every fedgate node has
the same config but for its store: a plain listener, one \`realm = "cloud"\`
route to the upstream, the user in MFA state \`enforced\` with one app
password, JSON logs to a file, \`failure_delay = "0s"\` (a refusal at once,
so that the revocations below time the revocation), lockout off (the
revocation loop is refused 200 times from one address), \`trusted_proxies
= ["127.0.0.1"]\`; the cold nodes add \`cache_max_entries = 0\` (nothing
cached: one argon2id verification per sign-in, m = 19456 KiB, t = 2, p = 1)
and every node has the default \`hash_workers\` (cores - 1 = $(($(nproc) - 1))) and
\`hash_queue\` (64). The SQLite nodes (warm and cold) share one SQLite file;
the PostgreSQL nodes (A and B warm, two more cold) share one database.

PostgreSQL $("$PG_BIN/postgres" --version | awk '{ print $3 }'): a private cluster made by \`initdb\` in the work dir (ext4
on the machine's disk, the same as the SQLite file), on a loopback port,
SCRAM authentication, with the settings of a production server: $PG_SHOWN.
haproxy $(haproxy -v | awk 'NR == 1 { print $3 }'): \`-db\` in the foreground, \`maxconn 4096\`, default threads
(one per core), \`mode http\`, \`balance roundrobin\`, \`http-reuse always\`,
\`option forwardfor\`, \`option httpchk\` with \`GET /readyz\` on each node's
admin listener every 1 s (\`fall 2 rise 2\`), \`retries 3\`, \`option
redispatch 1\`, \`retry-on conn-failure empty-response response-timeout\`
(which makes haproxy keep a copy of each request) and
\`http-request disable-l7-retry unless METH_GET\`. Targets run in rotating
order within each round; the summary shows medians over the rounds.
"fedgate µs/req" is the user+system CPU of the loaded fedgate processes over
the requests wrk counted; "haproxy µs/req" the same for haproxy.
EOF
    echo
    echo "### Warm sign-ins"
    echo
    echo "| target | req/s | node A req/s | node B req/s | p50 ms | p99 ms | fedgate µs/req | haproxy µs/req |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|"
    for t in sqlite pg lb; do
        a='' b=''
        [ "$t" = lb ] && a=$(printf '%.0f' "${MED_A[$t]}") b=$(printf '%.0f' "${MED_B[$t]}")
        [ "$t" = pg ] && a=$(printf '%.0f' "${MED_RPS[$t]}")
        printf '| %s | %.0f | %s | %s | %.2f | %.2f | %.1f | %s |\n' "${LABEL[$t]}" "${MED_RPS[$t]}" "$a" "$b" \
            "${MED_P50[$t]}" "${MED_P99[$t]}" "${MED_CPU[$t]}" "$([ "$t" = lb ] && printf '%.1f' "${MED_HA[$t]}")"
    done
    echo
    echo "- **PostgreSQL node / SQLite node, warm, directly**: req/s **${RATIO_WARM}x**" \
        "(target >= $TARGET_PG_VS_SQLITE: $(bench_verdict "$RATIO_WARM" '>=' "$TARGET_PG_VS_SQLITE"));" \
        "fedgate CPU per request ${RATIO_WARM_CPU}x (below 1: the PostgreSQL node spent less;" \
        "steadier than req/s on this shared machine, see the rounds)"
    echo "- two PostgreSQL nodes through haproxy / one SQLite node directly: req/s ${RATIO_LB}x" \
        "(haproxy and both nodes share the same $(nproc) cores with wrk: the balancer's own cost, not a capacity figure)"
    echo
    echo "### Cold sign-ins (cache off)"
    echo
    echo "| target | req/s | node A req/s | node B req/s | p50 ms | p99 ms | fedgate µs/req | argon2 per request |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|"
    for t in cold-sqlite cold-pg cold-lb; do
        a='' b=''
        [ "$t" = cold-lb ] && a=$(printf '%.0f' "${MED_A[$t]}") b=$(printf '%.0f' "${MED_B[$t]}")
        [ "$t" = cold-pg ] && a=$(printf '%.0f' "${MED_RPS[$t]}")
        printf '| %s | %.0f | %s | %s | %.2f | %.2f | %.0f | %.2f |\n' "${LABEL[$t]}" "${MED_RPS[$t]}" "$a" "$b" \
            "${MED_P50[$t]}" "${MED_P99[$t]}" "${MED_CPU[$t]}" "${MED_ARGON[$t]}"
    done
    echo
    echo "- PostgreSQL node / SQLite node, cold, directly: req/s ${RATIO_COLD}x"
    echo "- two cold PostgreSQL nodes through haproxy / one cold SQLite node: req/s ${RATIO_COLD_LB}x" \
        "(each node verifies one password at a time, \`hash_workers\` = $(($(nproc) - 1)); two nodes can keep" \
        "both cores hashing only while nothing else on the machine wants them)"
    if [ "$ALL_ERR" -ne 0 ]; then
        echo
        echo "**Warning**: $ALL_ERR socket errors or non-2xx answers over the runs (see the per-round table)."
    fi
    echo
    echo "### Cross-node revocation"
    echo
    cat <<EOF
$REV_DONE revocations, one after the other (user \`$REVOKE_USER\`, MFA state
\`enforced\`): \`fedgate app-password create\` with node A's config, node B
polled until it accepts the new app password and asked once more (now from
its cache), \`fedgate app-password delete\` with node A's config, then B
polled every 1 ms on one keep-alive connection (a Python \`http.client\`
loop, about 0.2 ms a request) until it answers 401. Refusing an app
password its view no longer holds costs B what any unknown secret costs: a
catch-up read of the change feed (at most one per 25 ms) and a dummy
argon2id verification; the second row, when the request B refused was
sent, shows when the revocation had reached B. Nearest-rank percentiles, ms.
EOF
    echo
    echo "| measured | p50 | p90 | p99 | max |"
    echo "|---|---:|---:|---:|---:|"
    rev_row "**delete command returned → B answers 401**" 5
    rev_row "delete command returned → the request B refused was sent" 4
    rev_row "delete command started → B answers 401" 6
    rev_row "the delete command itself" 3
    rev_row "create command returned → B accepts the new app password" 7
    echo
    echo "- **revocation p99 $REV_P99 ms, max $REV_MAX ms** (limit $REVOCATION_LIMIT_MS ms:" \
        "$(bench_verdict "$REV_MAX" '<' "$REVOCATION_LIMIT_MS") for every revocation;" \
        "goal $REVOCATION_GOAL_MS ms: $(bench_verdict "$REV_P99" '<' "$REVOCATION_GOAL_MS") at p99);" \
        "$REV_SLOW revocations not seen within $((2 * REVOCATION_LIMIT_MS)) ms"
    echo "- load average (1/5/15 min) before the revocations: $LOAD_REV"
    echo "- node B over the whole run: $NOTIFIED store notifications received, $CATCH_UPS catch-ups with the change feed on a sign-in that missed its view"
    [ -z "$REV_STOPPED" ] || echo "- **$REV_STOPPED**"
    echo
    echo "### Per round"
    echo
    echo "| round | run | req/s | node A | node B | p50 ms | p99 ms | errors | fedgate µs/req | argon2/req | PostgreSQL/SQLite |"
    echo "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    for ((r = 1; r <= ROUNDS; r++)); do
        for t in "${RUNS[@]}"; do
            a='' b='' ratio=''
            case $t in *lb) a=$(printf '%.0f' "${PER_A[$r,$t]}") b=$(printf '%.0f' "${PER_B[$r,$t]}") ;; esac
            case $t in
            pg) ratio="$(bench_ratio "${RPS[$r,pg]}" "${RPS[$r,sqlite]}")x" ;;
            cold-pg) ratio="$(bench_ratio "${RPS[$r,cold-pg]}" "${RPS[$r,cold-sqlite]}")x" ;;
            esac
            printf '| %d | %s | %.0f | %s | %s | %.2f | %.2f | %d | %s | %s | %s |\n' "$r" "$t" "${RPS[$r,$t]}" "$a" "$b" \
                "${P50[$r,$t]}" "${P99[$r,$t]}" "${ERR[$r,$t]}" "${CPU_US[$r,$t]}" "${ARGON[$r,$t]}" "$ratio"
        done
    done
    echo
    echo "### CPU seconds used during each measured run"
    echo
    echo "User+system CPU seconds per process over each measured run ($BENCH_WRK_DURATION), with"
    echo "$(nproc) cores shared by all (PostgreSQL and nginx with their children)."
    echo
    printf '| round | run | wrk |'
    for n in "${SERVER_NAMES[@]}"; do printf ' %s |' "$n"; done
    echo
    printf '|---:|---|---:|'
    for n in "${SERVER_NAMES[@]}"; do printf -- '---:|'; done
    echo
    for ((r = 1; r <= ROUNDS; r++)); do
        for t in "${RUNS[@]}"; do
            echo "| $r | $t | ${CPU_ROW[$r,$t]} |"
        done
    done
    echo
    echo "### Machine"
    echo
    bench_machine_facts
    echo "- load average (1/5/15 min) before the runs: $LOAD_BEFORE; after: $(bench_loadavg)"
    echo "- fedgate: $(bench_git_rev), release profile;" \
        "its logs over the runs (six processes): $FG_WARN warnings, $FG_ERROR errors${FG_COMPLAINTS:+ ($FG_COMPLAINTS)}"
} >"$SECTION_FILE"

bench_replace_section "$RESULTS" nodes "$SECTION_FILE"
cat "$SECTION_FILE"
bench_log "results written to bench/RESULTS.md (section nodes) and bench/results/nodes.md"
