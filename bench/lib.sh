# shellcheck shell=bash
# Shared functions for the benchmarks in bench/*.sh. Source it; do not run it.
#
# Every benchmark follows the same shape: make a work dir, start the peers
# and fedgate as children of the script, wait until each answers, run wrk
# against them in alternation, and replace its own section of
# bench/RESULTS.md. The functions below keep that shape identical across
# benchmarks so that their figures stay comparable.

# wrk settings shared by every benchmark; the peer figures in RESULTS.md were
# taken with these, so a benchmark that changes them is no longer comparable.
BENCH_WRK_THREADS=${BENCH_WRK_THREADS:-2}
BENCH_WRK_CONNS=${BENCH_WRK_CONNS:-64}
BENCH_WRK_DURATION=${BENCH_WRK_DURATION:-10s}
BENCH_WARMUP=${BENCH_WARMUP:-3s}
# wrk's default 2 s timeout silently drops slow requests from the latency
# figures, which would flatter exactly the target that stalls.
BENCH_WRK_TIMEOUT=${BENCH_WRK_TIMEOUT:-10s}

# bench_rounds: ROUNDS (default 3), checked to be a positive integer.
bench_rounds() {
    ROUNDS=${ROUNDS:-3}
    case $ROUNDS in
    '' | *[!0-9]* | 0) bench_die "ROUNDS must be a positive integer, got '$ROUNDS'" ;;
    esac
}

# bench_ldap_names: the directory layout the LDAP benchmarks load (BASE,
# PEOPLE, SERVICE_DN, ADMIN_DN).
# Set for the calling script, which uses them.
# shellcheck disable=SC2034
bench_ldap_names() {
    BASE=dc=example,dc=com
    PEOPLE=ou=people,$BASE
    SERVICE_DN=cn=fedgate,ou=services,$BASE
    ADMIN_DN=cn=admin,$BASE
}

BENCH_PIDS=()
BENCH_LAST_PID=
BENCH_WORKDIR=
BENCH_KEEP=${BENCH_KEEP:-0}

bench_log() {
    printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2
}

bench_die() {
    bench_log "ERROR: $*"
    exit 1
}

# --- installation ------------------------------------------------------------

# bench_need CMD:PKG[|ALT_PKG] ...
# Installs the Debian package for each missing command. The package index is
# refreshed only when something is missing, so a provisioned machine does not
# touch the network at all.
bench_need() {
    local spec cmd pkgs missing=() updated=0 sudo=()
    for spec in "$@"; do
        cmd=${spec%%:*}
        command -v "$cmd" >/dev/null 2>&1 || missing+=("$spec")
    done
    [ "${#missing[@]}" -eq 0 ] && return 0
    command -v apt-get >/dev/null 2>&1 ||
        bench_die "missing: ${missing[*]} (and no apt-get to install them)"
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null 2>&1 || bench_die "missing: ${missing[*]}; run as root to install"
        sudo=(sudo)
    fi
    for spec in "${missing[@]}"; do
        cmd=${spec%%:*}
        pkgs=${spec#*:}
        if [ "$updated" -eq 0 ]; then
            bench_log "installing packages for: ${missing[*]}"
            "${sudo[@]}" apt-get update -q >&2
            updated=1
        fi
        # Alternatives cover package renames between Debian releases (e.g.
        # nginx-light exists in bookworm, only nginx later).
        local pkg ok=0 alts=()
        IFS='|' read -r -a alts <<<"$pkgs"
        for pkg in "${alts[@]}"; do
            if "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
                apt-get install -y -q --no-install-recommends "$pkg" >&2; then
                ok=1
                break
            fi
        done
        [ "$ok" -eq 1 ] || bench_die "could not install any of: $pkgs"
        command -v "$cmd" >/dev/null 2>&1 || hash -r
        command -v "$cmd" >/dev/null 2>&1 || bench_die "$cmd still missing after installing $pkgs"
    done
}

# nginx lives in /usr/sbin, which is not on PATH for every user.
bench_nginx_bin() {
    if command -v nginx >/dev/null 2>&1; then
        command -v nginx
    elif [ -x /usr/sbin/nginx ]; then
        echo /usr/sbin/nginx
    else
        return 1
    fi
}

# bench_fedgate_app_password CONFIG USER
# Makes the store of the fedgate config CONFIG, adds USER in MFA state
# `enforced` (a Basic client must use an app password), allows app passwords
# and creates one; leaves it in APP_PW. The commands' output goes to
# fedgate-admin.log in the work dir.
bench_fedgate_app_password() {
    local config=$1 user=$2 log=$BENCH_WORKDIR/fedgate-admin.log created
    "$FEDGATE" --config "$config" store init >>"$log" 2>&1 || bench_die "fedgate store init failed"
    "$FEDGATE" --config "$config" user add "$user" --state enforced >>"$log" 2>&1 ||
        bench_die "fedgate user add failed"
    "$FEDGATE" --config "$config" settings set allow-app-passwords true >>"$log" 2>&1 ||
        bench_die "fedgate settings set failed"
    created=$("$FEDGATE" --config "$config" app-password create "$user" --name wrk --json 2>>"$log") ||
        bench_die "fedgate app-password create failed"
    # The JSON is pretty-printed; pick the one "password" field without a
    # JSON tool, which a minimal machine may lack.
    APP_PW=$(printf '%s\n' "$created" | sed -n 's/^[[:space:]]*"password":[[:space:]]*"\([^"]*\)".*/\1/p')
    [ -n "$APP_PW" ] || bench_die "no password in app-password create output: $created"
}

# --- work dir and process tracking -------------------------------------------

# Creates BENCH_WORKDIR and installs the cleanup trap. Everything a benchmark
# writes at run time (configs, logs, nginx temp dirs) goes there, never under
# /var or the repository.
# bench_build_fedgate: builds fedgate in release mode and leaves the binary's
# path in FEDGATE (CARGO_TARGET_DIR is honoured).
bench_build_fedgate() {
    local target_dir
    command -v cargo >/dev/null 2>&1 ||
        bench_die "cargo not found: install a Rust toolchain (see rust-version in Cargo.toml)"
    bench_log "building fedgate (release)"
    (cd "$BENCH_ROOT" && cargo build --release >&2) || bench_die "cargo build --release failed"
    target_dir=${CARGO_TARGET_DIR:-target}
    case $target_dir in /*) ;; *) target_dir=$BENCH_ROOT/$target_dir ;; esac
    FEDGATE=$target_dir/release/fedgate
    [ -x "$FEDGATE" ] || bench_die "no fedgate binary at $FEDGATE"
}

bench_init() {
    BENCH_WORKDIR=$(mktemp -d "${TMPDIR:-/tmp}/fedgate-bench.XXXXXX")
    # nginx workers drop to an unprivileged user when started as root; they
    # must be able to reach their temp paths inside this dir.
    chmod 0755 "$BENCH_WORKDIR"
    trap bench_cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
}

# Stops only the processes this script started, by PID, then removes the
# work dir. On failure the tail of every log is shown first, since the work
# dir (and with it the evidence) is about to disappear.
bench_cleanup() {
    local rc=$? pid i f
    trap - EXIT
    for pid in "${BENCH_PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${BENCH_PIDS[@]}"; do
        # Bounded wait: a process that ignores SIGTERM gets SIGKILL.
        for ((i = 0; i < 50; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [ -n "$BENCH_WORKDIR" ] && [ -d "$BENCH_WORKDIR" ]; then
        if [ "$rc" -ne 0 ]; then
            for f in "$BENCH_WORKDIR"/*.log; do
                [ -s "$f" ] || continue
                case $f in *access*.log) continue ;; esac
                printf '\n--- %s (last 20 lines) ---\n' "${f##*/}" >&2
                tail -n 20 "$f" >&2
            done
        fi
        if [ "$BENCH_KEEP" = 1 ]; then
            bench_log "work dir kept: $BENCH_WORKDIR"
        else
            rm -rf "$BENCH_WORKDIR"
        fi
    fi
    exit "$rc"
}

# bench_spawn LOGFILE CMD ARGS...
# Starts CMD in the background with stdout and stderr to LOGFILE, records its
# PID for cleanup and leaves it in BENCH_LAST_PID. Not meant for $(...): the
# PID list must be updated in this shell.
bench_spawn() {
    local log=$1
    shift
    "$@" >>"$log" 2>&1 </dev/null &
    BENCH_LAST_PID=$!
    BENCH_PIDS+=("$BENCH_LAST_PID")
}

bench_alive() {
    kill -0 "$1" 2>/dev/null
}

# bench_reap PID: waits for a process started with bench_spawn that ends on
# its own (a bounded load generator), returns its exit status and drops it
# from the cleanup list, so that cleanup never signals a PID that the kernel
# may since have given to some other process.
bench_reap() {
    local pid=$1 rc=0 p keep=()
    wait "$pid" || rc=$?
    for p in "${BENCH_PIDS[@]}"; do
        [ "$p" = "$pid" ] || keep+=("$p")
    done
    BENCH_PIDS=("${keep[@]}")
    return "$rc"
}

# --- ports and readiness -----------------------------------------------------

# bench_free_port VAR
# Assigns to VAR a loopback port nobody listens on. Ports are drawn below the
# Linux ephemeral range (32768+) so that wrk's and the proxies' own outgoing
# connections cannot take them between this check and the bind. Ports already
# handed out in this run are remembered, hence a variable and not $(...).
BENCH_PORTS_TAKEN=" "
bench_free_port() {
    local port i
    for ((i = 0; i < 200; i++)); do
        port=$((20000 + RANDOM % 12000))
        case $BENCH_PORTS_TAKEN in *" $port "*) continue ;; esac
        # A refused connect means nothing listens there.
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            BENCH_PORTS_TAKEN+="$port "
            printf -v "$1" '%s' "$port"
            return 0
        fi
    done
    bench_die "no free loopback port found"
}

# bench_wait_http NAME URL PID [TRIES] [EXPECT_BODY]
# Polls URL until it answers 2xx (and, when given, with EXPECT_BODY as the
# body), for at most TRIES x 0.1 s. Fails at once if PID has exited, so a
# target that crashed on start is reported as such and not as a timeout.
bench_wait_http() {
    bench_wait_http_with "$1" "$2" "$3" "${4:-100}" "${5-}"
}

# bench_wait_http_with NAME URL PID TRIES EXPECT_BODY [CURL_ARG...]
# bench_wait_http with extra curl arguments (e.g. -u USER:PASS), for targets
# that answer 2xx only to a signed-in request. EXPECT_BODY may be empty.
bench_wait_http_with() {
    local name=$1 url=$2 pid=$3 tries=$4 expect=$5 body i
    shift 5
    for ((i = 0; i < tries; i++)); do
        if ! bench_alive "$pid"; then
            bench_log "$name (pid $pid) exited before it was ready"
            return 1
        fi
        if body=$(curl -fsS --max-time 1 "$@" "$url" 2>/dev/null); then
            if [ -z "$expect" ] || [ "$body" = "$expect" ]; then
                bench_log "$name ready at $url"
                return 0
            fi
            bench_log "$name answered with an unexpected body: ${body:0:200}"
            return 1
        fi
        sleep 0.1
    done
    bench_log "$name not ready at $url after $tries tries"
    return 1
}

# --- nginx -------------------------------------------------------------------

# bench_nginx_conf NAME HTTP_BODY
# Writes $BENCH_WORKDIR/NAME.conf: a complete nginx config whose http block
# holds HTTP_BODY. Everything nginx would otherwise write under /var (pid,
# logs, temp files) is redirected into the work dir, and it stays in the
# foreground so that $! is the master's PID.
bench_nginx_conf() {
    local name=$1 body=$2
    local dir=$BENCH_WORKDIR/nginx-$name
    mkdir -p "$dir"
    cat >"$BENCH_WORKDIR/$name.conf" <<EOF
daemon off;
master_process on;
worker_processes ${BENCH_NGINX_WORKERS:-2};
pid $dir/nginx.pid;
error_log $BENCH_WORKDIR/$name-error.log warn;

events {
    worker_connections 4096;
}

http {
    default_type text/plain;
    client_body_temp_path $dir/client_body;
    proxy_temp_path $dir/proxy;
    fastcgi_temp_path $dir/fastcgi;
    uwsgi_temp_path $dir/uwsgi;
    scgi_temp_path $dir/scgi;
    # The default (1000) makes wrk reconnect mid-run and measure handshakes.
    keepalive_requests 1000000;
    keepalive_timeout 75s;

$body
}
EOF
}

# bench_nginx_start NAME
# Starts nginx with $BENCH_WORKDIR/NAME.conf; the master's PID is left in
# BENCH_LAST_PID. The config is checked first so that a syntax error is
# reported as such.
bench_nginx_start() {
    local name=$1 nginx conf=$BENCH_WORKDIR/$1.conf
    nginx=$(bench_nginx_bin) || bench_die "nginx not found"
    "$nginx" -t -q -p "$BENCH_WORKDIR/nginx-$name" -c "$conf" \
        -e "$BENCH_WORKDIR/$name-error.log" ||
        bench_die "nginx config $name is invalid"
    bench_spawn "$BENCH_WORKDIR/$name-stderr.log" \
        "$nginx" -p "$BENCH_WORKDIR/nginx-$name" -c "$conf" \
        -e "$BENCH_WORKDIR/$name-error.log"
}

# bench_upstream_start PORT
# The upstream every benchmark shares: nginx answering "ok" from memory, with
# no access log (it would add the same cost to every target). Its master's
# PID is left in BENCH_LAST_PID.
bench_upstream_start() {
    bench_nginx_conf upstream "
    server {
        listen 127.0.0.1:$1;
        access_log off;
        location / {
            return 200 \"ok\n\";
        }
    }"
    bench_nginx_start upstream
}

bench_nginx_version() {
    local nginx
    nginx=$(bench_nginx_bin) || return 0
    "$nginx" -v 2>&1 | sed 's|^nginx version: ||'
}

# --- slapd -------------------------------------------------------------------
# Every directory benchmark runs an OpenLDAP slapd of its own: its config,
# database and pid file in the work dir, in the foreground, on a free
# loopback port; a system slapd (Debian may start one on port 389 when the
# package is installed) is neither used nor touched. Debian builds back_mdb
# and the overlays (ppolicy, ...) as modules.
BENCH_SLAPD_MODULES=${BENCH_SLAPD_MODULES:-/usr/lib/ldap}
BENCH_SLAPD_SCHEMA=${BENCH_SLAPD_SCHEMA:-/etc/ldap/schema}

# bench_ldif_base BASE PEOPLE SERVICE_DN PASSWORD_FILE
# The entries every directory benchmark starts from, as LDIF on stdout: the
# base, ou=people, ou=services and the service account, whose password is
# read from PASSWORD_FILE (and stored as {SSHA}).
bench_ldif_base() {
    cat <<EOF
dn: $1
objectClass: dcObject
objectClass: organization
dc: example
o: Example

dn: $2
objectClass: organizationalUnit
ou: people

dn: ou=services,$1
objectClass: organizationalUnit
ou: services

dn: $3
objectClass: applicationProcess
objectClass: simpleSecurityObject
cn: fedgate
userPassword: $(bench_ssha "$4")

EOF
}

# bench_ldif_policy BASE POLICY_DN
# ou=policies and the default password policy of the ppolicy overlay, as
# LDIF on stdout: pwdLockout makes ppolicy honour pwdAccountLockedTime (how
# these benchmarks disable a user); pwdMaxFailure 0 never locks on failed
# binds.
bench_ldif_policy() {
    cat <<EOF
dn: ou=policies,$1
objectClass: organizationalUnit
ou: policies

dn: $2
objectClass: device
objectClass: pwdPolicy
cn: default
pwdAttribute: userPassword
pwdLockout: TRUE
pwdMaxFailure: 0

EOF
}

# bench_slapd_need [CMD:PKG...]: installs slapd and the ldap-utils clients
# (plus any further CMD:PKG given) and checks that back_mdb is there. slapd
# lives in /usr/sbin, which a non-login shell may lack on its PATH.
# shellcheck disable=SC2120  # the extra packages are optional
bench_slapd_need() {
    case ":$PATH:" in *:/usr/sbin:*) ;; *) PATH=$PATH:/usr/sbin ;; esac
    bench_need slapd:slapd slapadd:slapd slaptest:slapd slappasswd:slapd \
        ldapsearch:ldap-utils ldapwhoami:ldap-utils ldapmodify:ldap-utils "$@"
    bench_slapd_has_module back_mdb ||
        bench_die "slapd's back_mdb module missing from $BENCH_SLAPD_MODULES"
}

# bench_slapd_has_module NAME: whether the module NAME (back_mdb, ppolicy,
# ...) can be loaded.
bench_slapd_has_module() {
    [ -f "$BENCH_SLAPD_MODULES/$1.so" ] || [ -f "$BENCH_SLAPD_MODULES/$1.la" ]
}

# bench_ssha FILE: the {SSHA} hash of the password held in FILE (for
# userPassword and rootpw). Called in $(...), where bench_die ends only the
# subshell: check what came out.
bench_ssha() {
    slappasswd -h '{SSHA}' -T "$1" 2>>"$BENCH_WORKDIR/slappasswd.log" || bench_die "slappasswd failed"
}

# bench_slapd_conf_head DIR [MODULE...]
# Prints the global part of a slapd.conf: the core, cosine, inetorgperson
# and nis schemas, pid and args files in DIR, back_mdb and each MODULE
# loaded, and no logging (a directory shared by all targets would only add
# the same cost to each). The caller appends its limits and databases.
bench_slapd_conf_head() {
    local dir=$1 s m
    shift
    for s in core cosine inetorgperson nis; do
        echo "include $BENCH_SLAPD_SCHEMA/$s.schema"
    done
    echo "pidfile $dir/slapd.pid"
    echo "argsfile $dir/slapd.args"
    echo "modulepath $BENCH_SLAPD_MODULES"
    echo "moduleload back_mdb"
    for m in "$@"; do
        echo "moduleload $m"
    done
    echo "loglevel 0"
}

# bench_slapd_load CONF SUFFIX LDIF
# Checks CONF, then loads LDIF offline (slapadd -q) into the database of
# SUFFIX, which must be empty. Much faster than adding over the protocol,
# and it costs the running server nothing.
bench_slapd_load() {
    local conf=$1 suffix=$2 ldif=$3 w=$BENCH_WORKDIR
    slaptest -Q -u -f "$conf" >"$w/slaptest.log" 2>&1 ||
        bench_die "$conf is invalid: $(cat "$w/slaptest.log")"
    slapadd -q -b "$suffix" -f "$conf" -l "$ldif" >"$w/slapadd.log" 2>&1 ||
        bench_die "slapadd failed: $(cat "$w/slapadd.log")"
}

# bench_slapd_start CONF URI BIND_DN PASSWORD_FILE
# Starts slapd with CONF listening on URI (ldap://127.0.0.1:PORT), in the
# foreground (-d 0: no debug output, and $! is slapd's PID), output to
# slapd.log in the work dir, and waits until BIND_DN can bind with the
# password in PASSWORD_FILE. The PID is left in BENCH_LAST_PID.
bench_slapd_start() {
    local conf=$1 uri=$2 dn=$3 pw=$4 pid i
    bench_spawn "$BENCH_WORKDIR/slapd.log" slapd -d 0 -f "$conf" -h "$uri/"
    pid=$BENCH_LAST_PID
    for ((i = 0; i < 100; i++)); do
        bench_alive "$pid" || bench_die "slapd (pid $pid) exited on start"
        if ldapwhoami -x -H "$uri" -D "$dn" -y "$pw" >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.1
    done
    bench_die "slapd did not accept the bind of $dn at $uri"
}

# bench_slapd_fresh DB_DIR CONF SUFFIX LDIF URI BIND_DN PASSWORD_FILE [OLD_PID]
# Stops the slapd OLD_PID (when given), empties DB_DIR (CONF's database
# directory), loads LDIF into it and starts slapd again as
# bench_slapd_start does: a benchmark's rounds each start from the same
# directory. The new PID is left in BENCH_LAST_PID.
bench_slapd_fresh() {
    local db=$1 conf=$2 suffix=$3 ldif=$4 uri=$5 dn=$6 pw=$7 old=${8-}
    [ -z "$old" ] || bench_slapd_stop "$old"
    rm -rf "$db"
    mkdir -p "$db"
    bench_slapd_load "$conf" "$suffix" "$ldif"
    bench_slapd_start "$conf" "$uri" "$dn" "$pw"
}

# bench_slapd_stop PID: stops a slapd started by bench_slapd_start (SIGTERM:
# it closes its database cleanly), waits for it and drops it from the
# cleanup list, for a benchmark that reloads the directory between rounds.
bench_slapd_stop() {
    bench_stop "$1"
}

# bench_stop PID: stops a server started with bench_spawn (SIGTERM, SIGKILL
# after 10 s), waits for it and drops it from the cleanup list.
bench_stop() {
    local pid=$1 i
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
        bench_alive "$pid" || break
        sleep 0.1
    done
    bench_alive "$pid" && kill -KILL "$pid" 2>/dev/null
    bench_reap "$pid" || true
}

# bench_slapd_mdb SUFFIX ROOTDN PASSWORD_FILE DB_DIR: the head of a back_mdb
# database section (1 GiB map, the rootdn's password stored as {SSHA});
# the caller adds its indexes, rules and overlays.
bench_slapd_mdb() {
    cat <<EOF

database mdb
maxsize 1073741824
suffix "$1"
rootdn "$2"
rootpw $(bench_ssha "$3")
directory $4
EOF
}

# bench_slapd_acl SERVICE_DN: the access rules of a directory that fedgate
# reads as SERVICE_DN: passwords are only for binding, everything else is
# readable by the service account and by each user for their own entry.
bench_slapd_acl() {
    cat <<EOF
access to attrs=userPassword
    by anonymous auth
    by * none
access to *
    by dn.exact="$1" read
    by self read
    by * none
EOF
}

# bench_slapd_syncprov_db SERVICE_DN
# The database lines RFC 4533 content synchronisation (syncrepl) needs, for
# a benchmark that opts in: the indexes syncprov looks entries up by, and
# no size or time limit for SERVICE_DN, whose refresh reads every entry in
# one search. Goes in the database section, before any overlay; the
# overlay itself is bench_slapd_syncprov_overlay, and the global part must
# load the module (bench_slapd_conf_head DIR ... syncprov).
bench_slapd_syncprov_db() {
    echo "index entryCSN,entryUUID eq"
    echo "limits dn.exact=\"$1\" size=unlimited time=unlimited"
}

# bench_slapd_syncprov_overlay: the syncprov overlay, after the database's
# other overlays (ppolicy): a context checkpoint every 100 writes or 10
# minutes, and a session log of 10000 changes, so that a consumer resuming
# with a cookie gets the changes (deletions included) without a full
# refresh.
bench_slapd_syncprov_overlay() {
    echo "overlay syncprov"
    echo "syncprov-checkpoint 100 10"
    echo "syncprov-sessionlog 10000"
}

# bench_slapd_monitor_db READER_DN
# A cn=Monitor database (back-monitor, built into Debian's slapd) that only
# READER_DN may read, for counting the operations the server completes.
# Goes after the other databases.
bench_slapd_monitor_db() {
    cat <<EOF

database monitor
access to *
    by dn.exact="$1" read
    by * none
EOF
}

# bench_slapd_ops URI BIND_DN PASSWORD_FILE
# The operations slapd has completed since it started, from cn=Monitor: one
# "TYPE COUNT" line per operation type (bind, search, modify, ...) and
# "total COUNT". The read itself adds a bind, a search and an unbind; a
# caller that wants the operations of others measures that once and
# subtracts it.
bench_slapd_ops() {
    ldapsearch -x -LLL -o ldif-wrap=no -H "$1" -D "$2" -y "$3" \
        -b cn=Operations,cn=Monitor -s sub '(objectClass=*)' monitorOpCompleted \
        2>>"$BENCH_WORKDIR/monitor.log" |
        awk '
            /^dn: cn=Operations,cn=Monitor$/ { t = "total"; next }
            /^dn: cn=[^,]*,cn=Operations,cn=Monitor$/ {
                t = tolower(substr($2, 4, index($2, ",") - 4)); next
            }
            /^monitorOpCompleted: / && t != "" { print t, $2; n++ }
            END { if (n == 0) exit 1 }'
}

bench_slapd_version() {
    # The $ is slapd's, not the shell's.
    # shellcheck disable=SC2016
    slapd -VV 2>&1 | sed -n 's/.*\$OpenLDAP: slapd \([^ ]*\).*/\1/p' | head -n 1
}

# --- CPU accounting ----------------------------------------------------------

# bench_cpu_ticks PID...
# Prints, one line per PID, the user+system CPU ticks used so far by that
# process and its direct children (nginx workers are children of the master;
# threads are already summed into their process). Sampled before and after
# a run, it shows how the cores were split between wrk and the servers.
bench_cpu_ticks() {
    local stat p rest ppid i
    local -a f roots=("$@") sums=()
    for i in "${!roots[@]}"; do sums[i]=0; done
    for stat in /proc/[0-9]*/stat; do
        p=${stat#/proc/}
        p=${p%/stat}
        read -r rest 2>/dev/null <"$stat" || continue
        # Field 2 (comm) may hold spaces; everything after ") " is fixed.
        rest=${rest##*) }
        read -r -a f <<<"$rest"
        ppid=${f[1]}
        for i in "${!roots[@]}"; do
            if [ "$p" = "${roots[i]}" ] || [ "$ppid" = "${roots[i]}" ]; then
                sums[i]=$((sums[i] + f[11] + f[12]))
            fi
        done
    done
    printf '%s\n' "${sums[@]}"
}

bench_clk_tck() {
    getconf CLK_TCK 2>/dev/null || echo 100
}

# --- wrk ---------------------------------------------------------------------

bench_wrk_cmd() {
    echo "wrk -t$BENCH_WRK_THREADS -c$BENCH_WRK_CONNS -d$BENCH_WRK_DURATION --latency --timeout $BENCH_WRK_TIMEOUT"
}

# bench_wrk_warmup URL [WRK_ARG...]: a short discarded run, so that
# connection pools, caches and CPU frequency settle before the measured run.
# Extra arguments (e.g. -H for a header) go to wrk as they are.
bench_wrk_warmup() {
    local url=$1 out
    shift
    out=$(wrk -t"$BENCH_WRK_THREADS" -c"$BENCH_WRK_CONNS" -d"$BENCH_WARMUP" \
        --timeout "$BENCH_WRK_TIMEOUT" "$@" "$url" 2>&1) ||
        bench_die "wrk warm-up against $url failed: $out"
}

# bench_wrk URL OUTFILE [WRK_ARG...]
# The measured run: wrk output in OUTFILE, wrk's own user+system CPU seconds
# in OUTFILE.cpu.
bench_wrk() {
    local url=$1 out=$2
    shift 2
    bench_wrk_sized "$BENCH_WRK_THREADS" "$BENCH_WRK_CONNS" "$BENCH_WRK_DURATION" "$url" "$out" "$@"
}

# bench_wrk_sized THREADS CONNS DURATION URL OUTFILE [WRK_ARG...]
# bench_wrk with its own thread and connection counts and duration, for runs
# that share the machine with a second load on purpose.
bench_wrk_sized() {
    local threads=$1 conns=$2 duration=$3 url=$4 out=$5 TIMEFORMAT='%U %S'
    shift 5
    { time wrk -t"$threads" -c"$conns" -d"$duration" \
        --latency --timeout "$BENCH_WRK_TIMEOUT" "$@" "$url" >"$out" 2>&1; } 2>"$out.cpu" ||
        bench_die "wrk against $url failed: $(cat "$out")"
}

# bench_wrk_parse OUTFILE
# Prints "RPS P50_MS P99_MS ERRORS" from wrk --latency output. ERRORS counts
# socket errors plus non-2xx/3xx answers: a target that fails fast would
# otherwise look fast. Fails when the output has no figures.
bench_wrk_parse() {
    awk '
        function ms(v,   n, u) {
            n = v + 0
            u = v
            sub(/^[0-9.]+/, "", u)
            if (u == "us") return n / 1000
            if (u == "ms") return n
            if (u == "s")  return n * 1000
            if (u == "m")  return n * 60000
            if (u == "h")  return n * 3600000
            return -1
        }
        /^Requests\/sec:/              { rps = $2 }
        /^[ \t]+50(\.0+)?%[ \t]/       { p50 = ms($2) }
        /^[ \t]+99(\.0+)?%[ \t]/       { p99 = ms($2) }
        /Socket errors:/ {
            line = $0
            while (match(line, /[0-9]+/)) {
                err += substr(line, RSTART, RLENGTH)
                line = substr(line, RSTART + RLENGTH)
            }
        }
        /Non-2xx or 3xx responses:/    { err += $NF }
        END {
            if (rps == "" || p50 == "" || p99 == "" || p50 < 0 || p99 < 0) exit 1
            printf "%.2f %.3f %.3f %d\n", rps, p50, p99, err
        }
    ' "$1"
}

# bench_median V...: median of the arguments (mean of the middle two for an
# even count).
bench_median() {
    printf '%s\n' "$@" | sort -g | awk '
        { v[NR] = $1 }
        END {
            if (NR == 0) exit 1
            if (NR % 2) printf "%.3f\n", v[(NR + 1) / 2]
            else        printf "%.3f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2
        }'
}

# bench_ratio A B: A/B to two decimals, "n/a" when B is zero.
bench_ratio() {
    awk -v a="$1" -v b="$2" 'BEGIN { if (b + 0 == 0) print "n/a"; else printf "%.2f\n", a / b }'
}

# bench_verdict VALUE OP LIMIT: "met" or "NOT met" for VALUE >= or <= LIMIT
# (OP is ">=", "<=", ">" or "<"), "n/a" when VALUE is.
# bench_medians TARGET... : fills the global associative arrays MED_RPS,
# MED_P50 and MED_P99 from the per-round RPS, P50 and P99 ("round,target")
# that every benchmark records, over rounds 1..ROUNDS.
# shellcheck disable=SC2034  # the arrays are read by the calling benchmark
bench_medians() {
    declare -gA MED_RPS MED_P50 MED_P99
    local t r
    local -a v_rps v_p50 v_p99
    for t in "$@"; do
        v_rps=() v_p50=() v_p99=()
        for ((r = 1; r <= ROUNDS; r++)); do
            v_rps+=("${RPS[$r,$t]}") v_p50+=("${P50[$r,$t]}") v_p99+=("${P99[$r,$t]}")
        done
        MED_RPS[$t]=$(bench_median "${v_rps[@]}")
        MED_P50[$t]=$(bench_median "${v_p50[@]}")
        MED_P99[$t]=$(bench_median "${v_p99[@]}")
    done
}

bench_verdict() {
    awk -v v="$1" -v op="$2" -v l="$3" 'BEGIN {
        if (v == "n/a") { print "n/a"; exit }
        if (op == ">=")      ok = v + 0 >= l + 0
        else if (op == "<=") ok = v + 0 <= l + 0
        else if (op == ">")  ok = v + 0 > l + 0
        else                 ok = v + 0 < l + 0
        print ok ? "met" : "NOT met"
    }'
}

# bench_fmt_k RPS: 12345.6 -> 12.3k, for compact tables.
bench_fmt_k() {
    awk -v v="$1" 'BEGIN { printf "%.1fk\n", v / 1000 }'
}

# --- machine facts and results -----------------------------------------------

bench_machine_facts() {
    local cpu
    cpu=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo 2>/dev/null || true)
    echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "- cores (nproc): $(nproc)${cpu:+ ($cpu)}"
    echo "- kernel: $(uname -sr)"
    if [ -r /etc/os-release ]; then
        # The file differs per machine; there is nothing to check statically.
        # shellcheck disable=SC1091
        echo "- os: $(. /etc/os-release && echo "${PRETTY_NAME:-unknown}")"
    fi
    echo "- nginx: $(bench_nginx_version)"
    echo "- wrk: $(wrk -v 2>&1 | awk 'NR == 1 { print $2; exit }')"
}

bench_loadavg() {
    cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo unknown
}

# bench_git_rev: the revision being measured, marked when the tree has
# uncommitted changes.
bench_git_rev() {
    local rev
    rev=$(git -C "$BENCH_ROOT" rev-parse --short HEAD 2>/dev/null) || {
        echo "uncommitted tree"
        return 0
    }
    if [ -n "$(git -C "$BENCH_ROOT" status --porcelain --untracked-files=no 2>/dev/null)" ]; then
        rev="$rev (with local changes)"
    fi
    echo "$rev"
}

# bench_replace_section FILE NAME CONTENT_FILE
# Replaces what lies between "<!-- NAME:begin -->" and "<!-- NAME:end -->" in
# FILE with CONTENT_FILE, or appends a new marked section when there is none,
# so each benchmark owns exactly its own part of RESULTS.md.
bench_replace_section() {
    local file=$1 name=$2 content=$3 tmp
    if [ ! -f "$file" ]; then
        cat >"$file" <<'EOF'
# Benchmarks

Generated by `scripts/bench`; each section is rewritten by its own benchmark.
EOF
    fi
    tmp=$(mktemp "$file.XXXXXX")
    awk -v begin="<!-- $name:begin -->" -v end="<!-- $name:end -->" -v content="$content" '
        function emit(   line) {
            print begin
            while ((getline line < content) > 0) print line
            close(content)
            print end
            done = 1
        }
        $0 == begin { emit(); skip = 1; next }
        $0 == end   { skip = 0; next }
        !skip       { print }
        END {
            if (skip) exit 2
            if (!done) { print ""; emit() }
        }
    ' "$file" >"$tmp" || {
        rm -f "$tmp"
        bench_die "$file: section $name has a begin marker but no end marker"
    }
    # Rewritten in place rather than renamed over, so the file keeps its mode
    # (mktemp creates 0600).
    cat "$tmp" >"$file"
    rm -f "$tmp"
}
