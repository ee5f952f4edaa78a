#!/usr/bin/env bash
# Revocation benchmark: from a directory write (ldapmodify or ldapdelete
# returning) to fedgate refusing that user's warm app password, with
# fedgate under a warm sign-in load the whole time, on each directory:
#
#   slapd  an OpenLDAP slapd with the syncprov overlay;
#   ad     a Samba AD domain controller (the one the tests provision, with
#          tests/it/support/samba_setup.py), over LDAPS.
#
# In the same run, per directory, one fedgate per sync mode:
#
#   push  `[sync] mode = "push"`: on slapd one RFC 4533 refreshAndPersist
#         search (syncrepl) carries each change as it is made; on AD a
#         change notification search (1.2.840.113556.1.4.528) says that
#         something changed and an incremental uSNChanged read says what;
#         `interval = "300s"`, so that no scheduled pass explains a refusal;
#   poll  `[sync] mode = "poll"` with `interval = "1s"`: an incremental
#         pass every second (slapd: modifyTimestamp at or past the last
#         mark; AD: uSNChanged past the last one, tombstones included).
#
# `full_every = "24h"` in both, so that no full pass runs during the
# trials: OpenLDAP keeps no tombstones, so in poll mode on slapd only a
# full pass finds a deletion, and those deletions are run with the same
# timeout and reported as not refused (AD's poll finds them by tombstone).
#
# Trial kinds: disable (ppolicy lock: add pwdAccountLockedTime; fedgate's
# disabled_filter is (pwdAccountLockedTime=*)), rename (a new `mail`, the
# UPN: the old name must be refused, and the same app password must sign in
# under the new one), delete (ldapdelete). Per trial, after a random pause
# (0 to JITTER_MS, so writes do not line up with a pass or a liveness
# read), the app password is checked to sign in, the write is made as the
# rootdn, and the app password is sent every POLL_MS on one keep-alive
# connection until it is answered 401 or TIMEOUT_S passes (a failure,
# reported). Kinds are interleaved in a seeded random order.
#
# Directory load with nothing changing: slapd's completed operations
# (cn=Monitor, back-monitor) over IDLE_S seconds, after setup, with the
# warm load running, less the monitor reads' own operations, per minute.
#
# On AD, which has no cn=Monitor, the directory load is fedgate's own
# count of the LDAP requests it sent (fedgate_directory_operations_total),
# given for slapd too, next to slapd's count, as a check.
#
# Each mode starts from the same state: the directory reloaded (slapd:
# slapadd; AD: the DC's files copied back from before its first start), an
# empty store, fedgate started (its first full pass creates the users), one
# app password per user created through the admin API and signed in with
# once.
#
# Usage: bench/revoke.sh   (or scripts/bench revoke)
# Environment: DIRECTORIES (default "slapd ad"), MODES (default "push poll"), TRIALS (disables per mode,
# default 200), RENAMES and DELETES (default TRIALS/4, at least 1),
# POLL_DELETES (deletions in poll mode on slapd, default 5: each waits TIMEOUT_S),
# TIMEOUT_S (10), POLL_MS (5), JITTER_MS (1000), IDLE_S (60), DIR_USERS
# (users in the directory, default 1000), LOAD_CONNS (4) and LOAD_DELAY_MS
# (10) for the warm load, SEED (1), CARGO_TARGET_DIR, BENCH_KEEP=1 keeps
# the work dir with configs and logs.
set -euo pipefail

BENCH_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib.sh
. "$BENCH_ROOT/bench/lib.sh"

RESULTS=$BENCH_ROOT/bench/RESULTS.md
SECTION_FILE=$BENCH_ROOT/bench/results/revoke.md
HELPER=$BENCH_ROOT/bench/revoke.py

# positive NAME VALUE [MIN]: VALUE is an integer of at least MIN (1).
positive() {
    case $2 in
    '' | *[!0-9]*) bench_die "$1 must be a whole number, got '$2'" ;;
    esac
    [ "$2" -ge "${3:-1}" ] || bench_die "$1 must be at least ${3:-1}, got $2"
}
DIRECTORIES=${DIRECTORIES:-slapd ad}
MODES=${MODES:-push poll}
TRIALS=${TRIALS:-200}
positive TRIALS "$TRIALS"
QUARTER=$((TRIALS / 4 > 0 ? TRIALS / 4 : 1))
RENAMES=${RENAMES:-$QUARTER}
DELETES=${DELETES:-$QUARTER}
POLL_DELETES=${POLL_DELETES:-5}
TIMEOUT_S=${TIMEOUT_S:-10}
POLL_MS=${POLL_MS:-5}
JITTER_MS=${JITTER_MS:-1000}
IDLE_S=${IDLE_S:-60}
LOAD_CONNS=${LOAD_CONNS:-4}
LOAD_DELAY_MS=${LOAD_DELAY_MS:-10}
SEED=${SEED:-1}
LOAD_USERS=4
positive RENAMES "$RENAMES" 0
positive DELETES "$DELETES" 0
positive POLL_DELETES "$POLL_DELETES" 0
positive TIMEOUT_S "$TIMEOUT_S"
positive POLL_MS "$POLL_MS"
positive JITTER_MS "$JITTER_MS" 0
positive IDLE_S "$IDLE_S"
positive LOAD_CONNS "$LOAD_CONNS"
positive LOAD_DELAY_MS "$LOAD_DELAY_MS" 0
positive SEED "$SEED" 0
TRIAL_USERS=$((TRIALS + RENAMES + DELETES))
# Above every disable and deletion of a run (push counts them together).
GUARD_FLOOR=$((TRIALS + DELETES >= 1000 ? TRIALS + DELETES + 1 : 1000))
DIR_USERS=${DIR_USERS:-1000}
positive DIR_USERS "$DIR_USERS" $((TRIAL_USERS + LOAD_USERS))
# The DC's users are bulk0000 to bulk9999.
[ "$DIR_USERS" -le 10000 ] || bench_die "DIR_USERS must be at most 10000, got $DIR_USERS"
for m in $MODES; do
    case $m in
    push | poll) ;;
    *) bench_die "MODES holds '$m'; the modes are push and poll" ;;
    esac
done
for d in $DIRECTORIES; do
    case $d in
    slapd | ad) ;;
    *) bench_die "DIRECTORIES holds '$d'; the directories are slapd and ad" ;;
    esac
done
# testing DIR: whether DIRECTORIES holds DIR.
testing() {
    case " $DIRECTORIES " in *" $1 "*) return 0 ;; esac
    return 1
}
# The goal the push figures are checked against (issue: p99 under 500 ms
# for disables, renames and deletions alike).
TARGET_P99_MS=500

bench_ldap_names
POLICY_DN=cn=default,ou=policies,$BASE
# The Samba domain (as the tests' DC): its users are the bulk users
# bulk0000... under OU=Bulk that samba_setup.py creates.
AD_REALM=CORP.EXAMPLE.COM
AD_DOMAIN=corp.example.com
AD_NETBIOS=CORP
AD_BASE=DC=corp,DC=example,DC=com
AD_BULK=OU=Bulk,$AD_BASE
AD_SERVICE=fedgate-svc@$AD_DOMAIN
AD_ADMIN=Administrator@$AD_DOMAIN
AD_SETUP=$BENCH_ROOT/tests/it/support/samba_setup.py

case ":$PATH:" in *:/usr/sbin:*) ;; *) PATH=$PATH:/usr/sbin ;; esac
bench_need jq:jq openssl:openssl wrk:wrk curl:curl python3:python3-minimal
if testing slapd; then
    bench_slapd_need
    bench_slapd_has_module ppolicy ||
        bench_die "slapd's ppolicy module is missing from $BENCH_SLAPD_MODULES (disables are ppolicy locks)"
    bench_slapd_has_module syncprov ||
        bench_die "slapd's syncprov module is missing from $BENCH_SLAPD_MODULES"
fi
if testing ad; then
    bench_need samba:samba samba-tool:samba ldapmodify:ldap-utils ldapdelete:ldap-utils ldapsearch:ldap-utils
    # What provisioning needs besides the server (see scripts/install-test-deps).
    for pkg in samba-ad-provision samba-dsdb-modules samba-vfs-modules; do
        dpkg -s "$pkg" >/dev/null 2>&1 || bench_die "the Debian package $pkg is missing (scripts/install-test-deps installs it)"
    done
    [ -f "$AD_SETUP" ] || bench_die "no $AD_SETUP"
fi

bench_build_fedgate

bench_init
W=$BENCH_WORKDIR
# fedgate resolves relative paths against its working directory; starting
# everything from the work dir keeps any such file out of the repository.
cd "$W"

LDAP_PORT='' FG_PORT='' ADMIN_PORT=''
bench_free_port LDAP_PORT
bench_free_port FG_PORT
bench_free_port ADMIN_PORT
FG_URL=http://127.0.0.1:$FG_PORT
ADMIN_URL=http://127.0.0.1:$ADMIN_PORT

# --- secrets ------------------------------------------------------------------
(
    umask 077
    openssl rand -hex 16 | tr -d '\n' >"$W/admin.password"
    openssl rand -hex 16 | tr -d '\n' >"$W/ldap.password"
    openssl rand -hex 16 | tr -d '\n' >"$W/user.password"
    printf 'bench %s\n' "$(openssl rand -hex 32)" >"$W/admin.tokens"
)
for f in admin ldap user; do
    [ "$(wc -c <"$W/$f.password")" -eq 32 ] || bench_die "could not generate the passwords (openssl rand)"
done

# --- slapd ----------------------------------------------------------------------
SLAPD_URI=ldap://127.0.0.1:$LDAP_PORT
SLAPD_PID=''
if testing slapd; then
    mkdir -p "$W/slapd/db"
    {
        bench_slapd_conf_head "$W/slapd" ppolicy syncprov
        bench_slapd_mdb "$BASE" "$ADMIN_DN" "$W/admin.password" "$W/slapd/db"
        cat <<EOF
index objectClass eq
index mail,uid eq
# Serves the incremental pass's (modifyTimestamp>=MARK).
index modifyTimestamp eq
EOF
        bench_slapd_syncprov_db "$SERVICE_DN"
        bench_slapd_acl "$SERVICE_DN"
        cat <<EOF
# The policy's pwdLockout makes ppolicy honour pwdAccountLockedTime.
overlay ppolicy
ppolicy_default "$POLICY_DN"
EOF
        bench_slapd_syncprov_overlay
        bench_slapd_monitor_db "$ADMIN_DN"
    } >"$W/slapd.conf"
    chmod 0600 "$W/slapd.conf"
    grep -q '^rootpw {SSHA}' "$W/slapd.conf" || bench_die "slapd.conf has no rootpw (see slappasswd.log)"

    bench_log "writing $DIR_USERS directory users for slapd"
    {
        bench_ldif_base "$BASE" "$PEOPLE" "$SERVICE_DN" "$W/ldap.password"
        bench_ldif_policy "$BASE" "$POLICY_DN"
        # Nobody signs in with these users' directory passwords: one hash
        # serves them all.
        python3 "$HELPER" ldif --users "$DIR_USERS" --people "$PEOPLE" \
            --password-hash "$(bench_ssha "$W/user.password")"
    } >"$W/directory.ldif"
    [ "$(grep -c '^dn: uid=user' "$W/directory.ldif")" -eq "$DIR_USERS" ] ||
        bench_die "directory.ldif is incomplete (see slappasswd.log)"
    # The trial users come first, then the load users; the rest only make
    # the directory larger.
    seq 1 "$TRIAL_USERS" | sed 's/.*/user&@example.com/' >"$W/trial-upns-slapd"
    seq "$((TRIAL_USERS + 1))" "$((TRIAL_USERS + LOAD_USERS))" | sed 's/.*/user&@example.com/' >"$W/load-upns-slapd"
fi

# slapd_load: (re)starts slapd on a freshly loaded copy of the directory
# and checks what the trials rely on.
slapd_load() {
    bench_slapd_fresh "$W/slapd/db" "$W/slapd.conf" "$BASE" "$W/directory.ldif" "$SLAPD_URI" \
        "$SERVICE_DN" "$W/ldap.password" "$SLAPD_PID"
    SLAPD_PID=$BENCH_LAST_PID
    # What fedgate's push mode looks for in the rootDSE (RFC 4533).
    ldapsearch -x -LLL -H "$SLAPD_URI" -b '' -s base '(objectClass=*)' supportedControl 2>>"$W/ldapsearch.log" |
        grep -q '^supportedControl: 1.3.6.1.4.1.4203.1.9.1.1$' ||
        bench_die "slapd's rootDSE does not advertise the content synchronisation control (syncprov)"
    bench_slapd_ops "$SLAPD_URI" "$ADMIN_DN" "$W/admin.password" >/dev/null ||
        bench_die "cn=Monitor cannot be read (see monitor.log)"
}

# --- Samba AD DC ----------------------------------------------------------------
AD_IP='' AD_PID=''
# ad_tool CMD ARGS...: an ldap-utils CMD as the domain administrator over
# LDAPS, the DC's certificate checked against the bench CA.
ad_tool() {
    local cmd=$1
    shift
    LDAPTLS_CACERT=$W/ad/tls/ca.pem LDAPTLS_REQCERT=demand \
        "$cmd" -x -H "ldaps://$AD_IP" -D "$AD_ADMIN" -y "$W/ad/admin.password" "$@" 2>>"$W/ad-tools.log"
}

# ad_setup: provisions the domain into $W/ad/dc (as the tests' DC: LDAP
# only, on a loopback address of its own, a certificate from a CA made
# here), adds the users, the service account and its right to read
# tombstones, and keeps a copy from before the first start.
ad_setup() {
    local d=$W/ad ip port i free=0
    for ((i = 0; i < 64 && !free; i++)); do
        ip=127.0.$((RANDOM % 250 + 3)).$((RANDOM % 250 + 1))
        free=1
        for port in 389 636 3268 3269; do
            if (exec 3<>"/dev/tcp/$ip/$port") 2>/dev/null; then
                free=0
                break
            fi
        done
    done
    [ "$free" -eq 1 ] || bench_die "no free loopback address for the DC"
    AD_IP=$ip
    mkdir -p "$d/tls" "$d/dc/run"
    (
        umask 077
        # Complexity rules: upper, lower, digit and symbol.
        printf 'Bench-%s-1a' "$(openssl rand -hex 12)" >"$d/admin.password"
        printf 'Svc-%s-1a' "$(openssl rand -hex 12)" >"$d/service.password"
        openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=bench $AD_NETBIOS CA" \
            -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign \
            -keyout "$d/tls/ca.key" -out "$d/tls/ca.pem"
        openssl req -newkey rsa:2048 -nodes -subj "/CN=dc1.$AD_DOMAIN" -keyout "$d/tls/dc.key" -out "$d/tls/dc.csr"
        printf 'subjectAltName=DNS:dc1.%s,IP:%s\nextendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature,keyEncipherment\n' \
            "$AD_DOMAIN" "$AD_IP" >"$d/tls/dc.ext"
        openssl x509 -req -days 2 -in "$d/tls/dc.csr" -CA "$d/tls/ca.pem" -CAkey "$d/tls/ca.key" \
            -CAcreateserial -extfile "$d/tls/dc.ext" -out "$d/tls/dc.pem"
    ) >"$W/openssl.log" 2>&1 || bench_die "could not make the DC's certificate (see openssl.log)"
    bench_log "provisioning the Samba AD domain $AD_REALM on $AD_IP"
    samba-tool domain provision --realm="$AD_REALM" --domain="$AD_NETBIOS" --server-role=dc \
        --dns-backend=NONE --host-name=dc1 --adminpass="$(cat "$d/admin.password")" --targetdir="$d/dc" \
        --option="interfaces=$AD_IP/8" --option="bind interfaces only=yes" --option="server services=ldap" \
        --option="pid directory=$d/dc/run" --option="log file=$d/dc/log.%m" --option="tls enabled=yes" \
        --option="tls keyfile=$d/tls/dc.key" --option="tls certfile=$d/tls/dc.pem" \
        --option="tls cafile=$d/tls/ca.pem" >"$W/provision.log" 2>&1 ||
        bench_die "samba-tool domain provision failed (see provision.log)"
    bench_log "adding $DIR_USERS users to the domain"
    # Samba's Python modules are the distribution Python's.
    FEDGATE_SERVICE_PASSWORD=$(cat "$d/service.password") FEDGATE_BULK_USERS=$DIR_USERS \
        FEDGATE_DOMAIN_LOCKOUT=0 FEDGATE_FAST_LOCKOUT=3 FEDGATE_FAST_GROUP=fedgate-lock-fast \
        /usr/bin/python3 "$AD_SETUP" "$d/dc/etc/smb.conf" "$d/dc/private/sam.ldb" >"$W/ad-setup.log" 2>&1 ||
        bench_die "the domain's setup ($AD_SETUP) failed (see ad-setup.log)"
    cp -a "$d/dc" "$d/pristine"
    seq 0 $((TRIAL_USERS - 1)) | awk -v d="$AD_DOMAIN" '{ printf "bulk%04d@%s\n", $1, d }' >"$W/trial-upns-ad"
    seq "$TRIAL_USERS" $((TRIAL_USERS + LOAD_USERS - 1)) | awk -v d="$AD_DOMAIN" '{ printf "bulk%04d@%s\n", $1, d }' >"$W/load-upns-ad"
}

# ad_load: (re)starts the DC on its files as they were before the first
# start and checks what the trials rely on.
ad_load() {
    local d=$W/ad i
    if [ -n "$AD_PID" ]; then
        bench_stop "$AD_PID"
        AD_PID=''
    fi
    rm -rf "$d/dc"
    cp -a "$d/pristine" "$d/dc"
    bench_spawn "$W/samba.log" samba -s "$d/dc/etc/smb.conf" -F -M single --debug-stdout -d 1
    AD_PID=$BENCH_LAST_PID
    for ((i = 0; i < 600; i++)); do
        bench_alive "$AD_PID" || bench_die "samba (pid $AD_PID) exited on start (see samba.log)"
        ad_tool ldapsearch -LLL -b "$AD_BASE" -s base '(objectClass=*)' 1.1 >/dev/null && break
        sleep 0.1
    done
    [ "$i" -lt 600 ] || bench_die "the DC did not answer over LDAPS on $AD_IP within 60 s (see samba.log)"
    ad_tool ldapsearch -LLL -o ldif-wrap=no -b '' -s base '(objectClass=*)' supportedControl |
        grep -q '^supportedControl: 1.2.840.113556.1.4.528$' ||
        bench_die "the DC's rootDSE does not advertise the change notification control"
}

testing ad && ad_setup

# directory_load DIR: DIR from its starting state.
directory_load() {
    case $1 in
    slapd) slapd_load ;;
    ad) ad_load ;;
    esac
}

# directory_uri DIR: the URL fedgate and the trials reach DIR at.
directory_uri() {
    case $1 in
    slapd) echo "$SLAPD_URI" ;;
    ad) echo "ldaps://$AD_IP" ;;
    esac
}

# ops_snapshot FILE: slapd's completed operations by type, now.
ops_snapshot() {
    bench_slapd_ops "$SLAPD_URI" "$ADMIN_DN" "$W/admin.password" >"$1" ||
        bench_die "cn=Monitor cannot be read (see monitor.log)"
}

# ops_delta A B C: per type, B - A less the monitor read's own operations
# (C - B, C read right after B).
ops_delta() {
    awk 'FNR == 1 { f++ } { v[f, $1] = $2; t[$1] = 1 }
        END { for (k in t) printf "%s %d\n", k, (v[2, k] - v[1, k]) - (v[3, k] - v[2, k]) }' "$1" "$2" "$3" |
        sort
}

# requests_snapshot FILE: the LDAP requests fedgate has sent, by operation,
# and the connections it opened, from its /metrics.
requests_snapshot() {
    curl -fsS --max-time 5 "$ADMIN_URL/metrics" 2>/dev/null |
        awk '
            /^fedgate_directory_operations_total\{/ {
                op = $1; sub(/.*op="/, "", op); sub(/".*/, "", op); print op, $NF; n++
            }
            /^fedgate_directory_connections_total / { print "connections", $NF }
            END { if (n == 0) exit 1 }' >"$1" ||
        bench_die "fedgate's /metrics has no fedgate_directory_operations_total"
}

# per_minute A B SECONDS: B - A per type, per minute, as "type n, ..." with
# the total of the operations (connections apart) first.
per_minute() {
    awk -v s="$3" 'FNR == 1 { f++ } { v[f, $1] = $2; t[$1] = 1 }
        END { for (k in t) printf "%s %.0f\n", k, (v[2, k] - v[1, k]) * 60 / s }' "$1" "$2" |
        sort | awk '$1 != "connections" { total += $2 } { rest = rest ", " $1 " " $2 }
            END { printf "total %d%s\n", total, rest }'
}

# --- fedgate --------------------------------------------------------------------
# directory_toml DIR: fedgate's [directory] section for DIR.
directory_toml() {
    case $1 in
    slapd)
        cat <<EOF
[directory]
urls = ["$SLAPD_URI"]
bind_dn = "$SERVICE_DN"
bind_password_file = "$W/ldap.password"
base_dn = "$PEOPLE"
user_filter = "(&(objectClass=inetOrgPerson)(mail={upn}))"
login_filter = "(&(objectClass=inetOrgPerson)(uid={login}))"
disabled_filter = "(pwdAccountLockedTime=*)"
EOF
        ;;
    ad)
        cat <<EOF
[directory]
kind = "active_directory"
urls = ["ldaps://$AD_IP"]
ca_file = "$W/ad/tls/ca.pem"
bind_dn = "$AD_SERVICE"
bind_password_file = "$W/ad/service.password"
base_dn = "$AD_BULK"
user_filter = "(&(objectCategory=person)(objectClass=user)(userPrincipalName={upn}))"
login_filter = "(&(objectCategory=person)(objectClass=user)(sAMAccountName={login}))"
domain = "$AD_NETBIOS"
EOF
        ;;
    esac
}
# fedgate_config DIR MODE STORE: the config of the fedgate for DIR in MODE.
fedgate_config() {
    local dir=$1 mode=$2 store=$3 interval
    if [ "$mode" = push ]; then
        interval=300s
    else
        interval=1s
    fi
    cat <<EOF
[server]
listen = []
listen_plain = ["127.0.0.1:$FG_PORT"]

[store]
url = "sqlite://$store/fedgate.db"
key_file = "$store/fedgate.key"

[admin]
listen = "127.0.0.1:$ADMIN_PORT"
token_file = "$W/admin.tokens"

[auth]
# A refusal is answered at once, so that the trials time the revocation and
# not the anti-spraying delay (1 s by default).
failure_delay = "0s"

# Every trial ends in a refusal, hundreds of accounts from one address:
# the spray throttle (source_threshold) would answer 429 to the next
# trials, and a renamed user's old name is an unknown account to it.
[lockout]
threshold = 0
source_threshold = 0

$(directory_toml "$dir")

[sync]
mode = "$mode"
interval = "$interval"
full_every = "24h"
# The trials disable or delete up to $((TRIALS + DELETES)) users of $DIR_USERS within
# minutes, on purpose: the mass-change guard would stop them.
guard_floor = $GUARD_FLOOR

[[route]]
path = "/"
upstream = "builtin:whoami"
realm = "cloud"
EOF
}

# log_lines FILE MESSAGE: the JSON log events of FILE with that message,
# one compact object each (fields lifted to the top).
log_lines() {
    jq -c --arg m "$2" '(.fields // {}) + . | select(.message == $m)' "$1" 2>/dev/null || true
}

# wait_log FILE MESSAGE JQ_FILTER PID TENTHS WHAT: waits until FILE has an
# event MESSAGE that JQ_FILTER selects, for at most TENTHS x 0.1 s.
wait_log() {
    local file=$1 msg=$2 filter=$3 pid=$4 tries=$5 what=$6 i
    for ((i = 0; i < tries; i++)); do
        bench_alive "$pid" || bench_die "fedgate (pid $pid) exited while waiting for $what"
        if [ -n "$(log_lines "$file" "$msg" | jq -c "select($filter)" 2>/dev/null | head -n 1)" ]; then
            return 0
        fi
        sleep 0.1
    done
    bench_die "no $what after $((tries / 10)) s (see ${file##*/})"
}

# metric NAME [LABEL]: the sum of the /metrics samples of NAME that carry
# LABEL (such as kind="full"), "n/a" when there is none.
metric() {
    curl -fsS --max-time 5 "$ADMIN_URL/metrics" 2>/dev/null |
        awk -v m="$1" -v l="${2-}" '
            ($1 == m || index($1, m "{") == 1) && index($1, l) { s += $NF; n++ }
            END { if (n) printf "%d\n", s; else print "n/a" }'
}

# The warm load: wrk on LOAD_CONNS connections, each sending a sign-in of
# one of the load users (in turn) every LOAD_DELAY_MS plus its answer time.
# wrk's own delay hook paces it; its duration is only a bound: it is stopped
# (SIGINT, it then prints its figures) when the trials end. The headers,
# one per load user, are put in front of this once their app passwords
# exist.
cat >"$W/load-tail.lua" <<EOF
local n = 0
request = function()
  n = n % #headers + 1
  return wrk.format("GET", "/", { ["Authorization"] = headers[n] })
end
delay = function() return $LOAD_DELAY_MS end
EOF
LOAD_MAX_S=7200

declare -A LOAD_RPS LOAD_P99 LOAD_ERR LOAD_N IDLE_OPS IDLE_REQS TRIAL_OPS TRIAL_REQS MODE_LINE PUSH_LINE PASSES CHANGES WARNS LOST
runs=()
LOAD_BEFORE=$(bench_loadavg)

# run_mode DIR MODE: one fedgate in MODE on DIR from a fresh directory and
# store: setup, idle measurement, trials.
run_mode() {
    local dir=$1 mode=$2 run=$1/$2 fg_pid wrk_pid deletes rps p99 err uri method
    local tag=$1-$2
    local cfg=$W/fedgate-$tag.toml log=$W/fedgate-$tag.log store=$W/store-$tag
    uri=$(directory_uri "$dir")
    bench_log "$run: loading the directory and starting it on $uri"
    directory_load "$dir"
    rm -rf "$store"
    mkdir -p "$store"
    fedgate_config "$dir" "$mode" "$store" >"$cfg"
    "$FEDGATE" --config "$cfg" check-config >"$W/check-config-$tag.log" 2>&1 ||
        bench_die "fedgate refuses the $run config: $(cat "$W/check-config-$tag.log")"
    "$FEDGATE" --config "$cfg" store init >>"$W/fedgate-admin.log" 2>&1 || bench_die "fedgate store init failed"
    "$FEDGATE" --config "$cfg" settings set allow-app-passwords true >>"$W/fedgate-admin.log" 2>&1 ||
        bench_die "fedgate settings set failed"

    bench_spawn "$log" "$FEDGATE" --log-format json serve --config "$cfg"
    fg_pid=$BENCH_LAST_PID
    if [ "$mode" = push ]; then
        method=syncrepl
        [ "$dir" = ad ] && method=notification
        # A push run that fell back to polling would measure the wrong thing.
        wait_log "$log" "sync mode" ".mode == \"push\" and .method == \"$method\"" "$fg_pid" 300 \
            "a \"sync mode\" line saying mode push, method $method"
        wait_log "$log" "sync push connected" 'true' "$fg_pid" 600 'a "sync push connected" line'
        # The users arrive with the first full pass or the push refresh,
        # whichever comes first: the setup below waits for each.
    else
        wait_log "$log" "sync pass" '.kind == "full" and .outcome == "completed"' "$fg_pid" 600 \
            "first full pass"
        wait_log "$log" "sync mode" '.mode == "poll"' "$fg_pid" 100 'a "sync mode" line saying mode poll'
    fi
    MODE_LINE[$run]=$(log_lines "$log" "sync mode" | head -n 1 |
        jq -r '"mode \(.mode), method \(.method), reason: \(.reason)"')
    bench_log "$run: fedgate up (${MODE_LINE[$run]:-no sync mode line}); creating app passwords"

    python3 "$HELPER" setup --admin "$ADMIN_URL" --token-file "$W/admin.tokens" --fedgate "$FG_URL" \
        --upns "$W/trial-upns-$dir" --out "$W/creds-$tag" 2>"$W/setup-$tag.err" ||
        bench_die "app-password setup failed: $(tail -n 5 "$W/setup-$tag.err")"
    python3 "$HELPER" setup --admin "$ADMIN_URL" --token-file "$W/admin.tokens" --fedgate "$FG_URL" \
        --upns "$W/load-upns-$dir" --out "$W/load-creds-$tag" 2>>"$W/setup-$tag.err" ||
        bench_die "app-password setup (load users) failed: $(tail -n 5 "$W/setup-$tag.err")"

    {
        echo 'headers = {'
        while IFS=$'\t' read -r upn pw; do
            printf '  "Basic %s",\n' "$(printf '%s:%s' "$upn" "$pw" | base64 -w0)"
        done <"$W/load-creds-$tag"
        echo '}'
        cat "$W/load-tail.lua"
    } >"$W/load-$tag.lua"
    bench_spawn "$W/load-$tag.out" wrk -t1 -c"$LOAD_CONNS" -d"${LOAD_MAX_S}s" --latency \
        --timeout "$BENCH_WRK_TIMEOUT" -s "$W/load-$tag.lua" "$FG_URL/"
    wrk_pid=$BENCH_LAST_PID

    bench_log "$run: idle directory load over $IDLE_S s (warm load running)"
    [ "$dir" = slapd ] && ops_snapshot "$W/ops-$tag-idle-a"
    requests_snapshot "$W/reqs-$tag-idle-a"
    sleep "$IDLE_S"
    requests_snapshot "$W/reqs-$tag-idle-b"
    IDLE_REQS[$run]=$(per_minute "$W/reqs-$tag-idle-a" "$W/reqs-$tag-idle-b" "$IDLE_S")
    IDLE_OPS[$run]='n/a (Samba has no cn=Monitor)'
    if [ "$dir" = slapd ]; then
        ops_snapshot "$W/ops-$tag-idle-b"
        ops_snapshot "$W/ops-$tag-idle-c"
        ops_delta "$W/ops-$tag-idle-a" "$W/ops-$tag-idle-b" "$W/ops-$tag-idle-c" >"$W/ops-$tag-idle"
        IDLE_OPS[$run]=$(awk -v s="$IDLE_S" '{ printf "%s%s %.0f", sep, $1, $2 * 60 / s; sep = ", " }' "$W/ops-$tag-idle")
    fi
    bench_log "$run: idle, per minute: directory's count ${IDLE_OPS[$run]}; fedgate's requests ${IDLE_REQS[$run]}"

    deletes=$DELETES
    [ "$dir/$mode" = slapd/poll ] && deletes=$POLL_DELETES
    bench_log "$run: trials: $TRIALS disables, $RENAMES renames, $deletes deletions"
    [ "$dir" = slapd ] && ops_snapshot "$W/ops-$tag-trials-a"
    requests_snapshot "$W/reqs-$tag-trials-a"
    local admin_dn=$ADMIN_DN admin_pw=$W/admin.password people=$PEOPLE
    if [ "$dir" = ad ]; then
        admin_dn=$AD_ADMIN admin_pw=$W/ad/admin.password people=$AD_BULK
    fi
    LDAPTLS_CACERT=$W/ad/tls/ca.pem LDAPTLS_REQCERT=demand \
        python3 "$HELPER" trials --mode "$run" --directory "$dir" --fedgate "$FG_URL" --ldap-uri "$uri" \
        --admin-dn "$admin_dn" --admin-pw "$admin_pw" --people "$people" \
        --creds "$W/creds-$tag" --out "$W/trials.tsv" --disables "$TRIALS" --renames "$RENAMES" \
        --deletes "$deletes" --seed "$SEED" --timeout "$TIMEOUT_S" --poll-ms "$POLL_MS" \
        --jitter-ms "$JITTER_MS" 2>"$W/trials-$tag.err" ||
        bench_die "the trials failed: $(tail -n 5 "$W/trials-$tag.err")"
    requests_snapshot "$W/reqs-$tag-trials-b"
    TRIAL_REQS[$run]=$(per_minute "$W/reqs-$tag-trials-a" "$W/reqs-$tag-trials-b" 60 | sed 's/^total/all/')
    TRIAL_OPS[$run]='n/a (Samba has no cn=Monitor)'
    if [ "$dir" = slapd ]; then
        ops_snapshot "$W/ops-$tag-trials-b"
        ops_snapshot "$W/ops-$tag-trials-c"
        ops_delta "$W/ops-$tag-trials-a" "$W/ops-$tag-trials-b" "$W/ops-$tag-trials-c" >"$W/ops-$tag-trials"
        TRIAL_OPS[$run]=$(awk '{ printf "%s%s %d", sep, $1, $2; sep = ", " }' "$W/ops-$tag-trials")
    fi

    bench_alive "$wrk_pid" || bench_die "the warm load (wrk) ended before the trials did: $(cat "$W/load-$tag.out")"
    kill -INT "$wrk_pid"
    bench_reap "$wrk_pid" || bench_die "wrk failed: $(cat "$W/load-$tag.out")"
    read -r rps _ p99 err < <(bench_wrk_parse "$W/load-$tag.out") ||
        bench_die "could not parse the warm load's figures: $(cat "$W/load-$tag.out")"
    LOAD_RPS[$run]=$rps LOAD_P99[$run]=$p99 LOAD_ERR[$run]=$err
    LOAD_N[$run]=$(awk '/requests in/ { print $1; exit }' "$W/load-$tag.out")

    bench_alive "$fg_pid" || bench_die "fedgate ($run) died during the trials"
    PASSES[$run]="full $(metric fedgate_sync_passes_total 'kind="full"'), incremental $(metric fedgate_sync_passes_total 'kind="incremental"')"
    CHANGES[$run]=''
    local k
    for k in add modify rename delete; do
        CHANGES[$run]+="${CHANGES[$run]:+, }$k $(metric fedgate_sync_changes_received_total "kind=\"$k\"")"
    done
    LOST[$run]=$(log_lines "$log" "sync push lost" | wc -l)
    PUSH_LINE[$run]=$("$FEDGATE" --config "$cfg" sync status 2>>"$W/fedgate-admin.log" | grep '^push ' || true)
    WARNS[$run]=$(jq -r 'select(.level == "WARN" or .level == "ERROR") | ((.fields // {}) + .) | .message' "$log" 2>/dev/null |
        sort | uniq -c | sort -rn | head -n 5 | awk '{ c = $1; $1 = ""; printf "%s%s x%d", sep, substr($0, 2), c; sep = "; " }' || true)
    [ -z "${WARNS[$run]}" ] || bench_log "$run: fedgate warned: ${WARNS[$run]}"

    kill -TERM "$fg_pid" 2>/dev/null || true
    bench_reap "$fg_pid" || true
    runs+=("$run")
}

: >"$W/trials.tsv"
for dir in $DIRECTORIES; do
    for mode in $MODES; do
        run_mode "$dir" "$mode"
    done
done
if [ -n "$SLAPD_PID" ]; then
    bench_slapd_stop "$SLAPD_PID"
    SLAPD_PID=''
fi
if [ -n "$AD_PID" ]; then
    bench_stop "$AD_PID"
    AD_PID=''
fi

# --- report -----------------------------------------------------------------------------
python3 "$HELPER" stats --results "$W/trials.tsv" >"$W/stats.tsv" ||
    bench_die "could not summarise the trials"
# Every trial on record, for the results file.
declare -A VERDICT=()
while IFS=$'\t' read -r run kind n ok p50 p99 max write fails why; do
    bench_log "$run $kind: $ok of $n refused; p50 $p50 ms, p99 $p99 ms, max $max ms; failures $fails${why:+ ($why)}"
    if [ "${run#*/}" = push ]; then
        if [ "$fails" -eq 0 ]; then
            VERDICT[$run $kind]=$(bench_verdict "$p99" '<' "$TARGET_P99_MS")
        else
            VERDICT[$run $kind]="NOT met ($fails not refused within $TIMEOUT_S s)"
        fi
    fi
done <"$W/stats.tsv"
RENAME_NEW_OK=$(awk -F'\t' '$2 == "rename" && $4 == "refused" && $8 ~ /new name answered 200/ { n[$1]++ }
    END { for (m in n) { printf "%s%s %d", sep, m, n[m]; sep = ", " } }' "$W/trials.tsv")

mkdir -p "$(dirname "$SECTION_FILE")"
{
    echo "## Revocation latency: directory write to refused app password, push vs poll"
    echo
    cat <<EOF
Reproduce with \`scripts/bench revoke\` (\`DIRECTORIES="$DIRECTORIES" MODES="$MODES" TRIALS=$TRIALS RENAMES=$RENAMES DELETES=$DELETES POLL_DELETES=$POLL_DELETES\`; the release build is part of it).
One fedgate per directory and mode (release build, SQLite store, a plain
listener with one \`realm = "cloud"\` route to \`builtin:whoami\`,
\`[auth] failure_delay = "0s"\` so that a refusal is answered at once,
\`[lockout] threshold = 0\` and \`source_threshold = 0\` since every trial
ends in a refusal from the one client address, hundreds of accounts in
all, which the spray throttle would otherwise answer with 429; JSON logs to
a file), all on loopback. \`[sync] full_every = "24h"\` (no full pass during
the trials) and \`guard_floor = $GUARD_FLOOR\` (the trials disable and delete
hundreds of users within minutes on purpose; the mass-change guard would
stop them), and:

- **push**: \`[sync] mode = "push"\`, \`interval = "300s"\` (no incremental pass
  runs while the persistent search is up, so only push explains a refusal);
- **poll**: \`[sync] mode = "poll"\`, \`interval = "1s"\`.

The directories:

- **slapd**: one OpenLDAP slapd (back_mdb, $DIR_USERS inetOrgPerson users under
  \`$PEOPLE\`, loaded with slapadd before each mode; ppolicy overlay with
  \`pwdLockout\`; syncprov overlay after it with \`syncprov-checkpoint 100 10\`,
  \`syncprov-sessionlog 10000\`, equality indexes on entryCSN and entryUUID,
  \`limits dn.exact="$SERVICE_DN" size=unlimited time=unlimited\`; cn=Monitor
  readable by the rootdn only; \`loglevel 0\`), read as \`$SERVICE_DN\` over
  plain LDAP with
  \`user_filter = "(&(objectClass=inetOrgPerson)(mail={upn}))"\` and
  \`disabled_filter = "(pwdAccountLockedTime=*)"\`. Disable: \`add:
  pwdAccountLockedTime\` = \`000001010000Z\`; rename: \`replace: mail\` (the
  UPN); delete: \`ldapdelete\`; as the rootdn.
- **ad**: one Samba AD DC (\`samba -M single\`, only
  the LDAP server task, LDAPS with a certificate from a CA made for the
  run), provisioned as the tests' DC (\`tests/it/support/samba_setup.py\`)
  with $DIR_USERS users under \`$AD_BULK\`, its files copied back from before the
  first start before each mode; read as \`$AD_SERVICE\` (an ordinary user,
  allowed to list and read \`CN=Deleted Objects\`) over LDAPS with
  \`kind = "active_directory"\` and \`base_dn = "$AD_BULK"\` (an OU: notifications
  are then registered on the domain's root, the only place Windows takes a
  subtree notification, and those outside the OU ignored). Disable: \`replace:
  userAccountControl\` = 546 (ACCOUNTDISABLE); rename: \`replace:
  userPrincipalName\`; delete: \`ldapdelete\`; as the domain administrator
  over LDAPS.

Each mode starts from the reloaded directory and an empty store; fedgate's
first full pass creates the users; each trial user ($TRIAL_USERS) and load user
($LOAD_USERS) gets one app password through the admin API and signs in with it
once, so every credential is warm (in the verified-credential cache)
before the trials. The warm sign-in load runs from then to the end of the
trials: \`wrk -t1 -c$LOAD_CONNS --latency\` with a Lua script sending the load
users' app passwords in turn and a delay of $LOAD_DELAY_MS ms before each request.

A trial, per user, in a seeded random order of kinds (\`SEED=$SEED\`): a
random pause of 0 to $JITTER_MS ms (so that writes fall anywhere relative to
the poll interval and the push connection's liveness reads); one sign-in
that must be accepted; the directory write with \`ldapmodify\` or
\`ldapdelete\`; **t0** when the tool returns; then the same app password
every $POLL_MS ms on one keep-alive connection until it is answered 401, **t1**
when that answer arrives. The figure is t1 - t0 (so it includes up to
$POLL_MS ms of polling granularity). A trial not refused within $TIMEOUT_S s is a
failure. For renames, the old name must be refused and the new name is
then tried once with the same app password (a rename keeps the user and
their app passwords). On slapd in poll mode, deletions wait for a full
pass (OpenLDAP keeps no tombstones for an incremental pass to find, and
\`full_every\` is 24 h here): $POLL_DELETES of them are run with the same timeout and
reported as they end. AD's incremental pass finds deletions by their
tombstones.

EOF
    for run in "${runs[@]}"; do
        echo "### $run"
        echo
        echo "| kind | trials | refused | p50 ms | p99 ms | max ms | the write itself, p50 ms | failures |"
        echo "|---|---:|---:|---:|---:|---:|---:|---:|"
        while IFS=$'\t' read -r r kind n ok p50 p99 max write fails why; do
            [ "$r" = "$run" ] || continue
            echo "| $kind | $n | $ok | $p50 | $p99 | $max | $write | $fails${why:+ ($why)} |"
        done <"$W/stats.tsv"
        echo
        echo "- sync mode: ${MODE_LINE[$run]:-no \"sync mode\" log line}"
        [ -n "${PUSH_LINE[$run]}" ] && echo "- \`fedgate sync status\` after the trials: \`${PUSH_LINE[$run]}\`"
        echo "- passes this fedgate ran (\`fedgate_sync_passes_total\`): ${PASSES[$run]}"
        echo "- changes received by push (\`fedgate_sync_changes_received_total\`): ${CHANGES[$run]}"
        [ "${run#*/}" = push ] && echo "- \"sync push lost\" events during the run: ${LOST[$run]}"
        echo "- warm load: ${LOAD_N[$run]} sign-ins, $(printf '%.0f' "${LOAD_RPS[$run]}") req/s, p99 ${LOAD_P99[$run]} ms, errors or non-2xx ${LOAD_ERR[$run]}"
        echo "- the directory's operations during the trials (all kinds, the trials' own writes and binds included): ${TRIAL_OPS[$run]}"
        echo "- fedgate's LDAP requests during the trials (\`fedgate_directory_operations_total\`, all, not per minute): ${TRIAL_REQS[$run]}"
        echo "- fedgate warnings and errors (most frequent first): ${WARNS[$run]:-none}"
        echo
    done
    echo "### Directory load with nothing changing"
    echo
    cat <<EOF
Over $IDLE_S s after setup, the warm load running (app passwords never reach
the directory), per minute: the directory's own count where it keeps one
(slapd: \`monitorOpCompleted\` under \`cn=Operations,cn=Monitor\`, less the
operations of the monitor read itself, measured by a second read right
after), and the LDAP requests fedgate sent (\`fedgate_directory_operations_total\`
by \`op\`, the 30 s reachability probes included; \`connections\` from
\`fedgate_directory_connections_total\`, not in the total).

| directory/mode | the directory's count (total, then by type) | fedgate's requests (total, then by type) |
|---|---|---|
EOF
    for run in "${runs[@]}"; do
        echo "| $run | ${IDLE_OPS[$run]} | ${IDLE_REQS[$run]} |"
    done
    echo
    if [ "$TRIALS" -lt 200 ] || [ "$RENAMES" -lt 50 ] || [ "$DELETES" -lt 50 ]; then
        echo "**A short run** ($TRIALS disables, $RENAMES renames, $DELETES deletions per mode): the goal asks for at least 200 disables, and 50 renames and deletions each (the defaults); its percentiles are not the measurement."
        echo
    fi
    local_verdicts=0
    for dir in $DIRECTORIES; do
        [ -n "${VERDICT[$dir/push disable]-}${VERDICT[$dir/push rename]-}${VERDICT[$dir/push delete]-}" ] || continue
        local_verdicts=1
        echo "**$dir, push, goal p99 < $TARGET_P99_MS ms**: disables ${VERDICT[$dir/push disable]:-n/a}, renames ${VERDICT[$dir/push rename]:-n/a}, deletions ${VERDICT[$dir/push delete]:-n/a}."
        echo
    done
    [ "$local_verdicts" -eq 1 ] ||
        echo "**Push mode was not run** (\`MODES=\"$MODES\"\`): no verdict on the goal (p99 < $TARGET_P99_MS ms)."
    [ -n "$RENAME_NEW_OK" ] && echo "Renames whose new name then signed in with the same app password: $RENAME_NEW_OK."
    echo
    echo "### Machine"
    echo
    bench_machine_facts | grep -v -e '^- nginx:'
    testing slapd && echo "- slapd: OpenLDAP $(bench_slapd_version)"
    testing ad && echo "- samba: $(samba -V 2>/dev/null | awk '{ print $2 }')"
    echo "- python: $(python3 --version 2>&1 | awk '{ print $2 }')"
    echo "- load average (1/5/15 min) before the runs: $LOAD_BEFORE; after: $(bench_loadavg)"
    echo "- fedgate: $(bench_git_rev), release profile"
} >"$SECTION_FILE"

bench_replace_section "$RESULTS" revoke "$SECTION_FILE"
cat "$SECTION_FILE"
bench_log "results written to bench/RESULTS.md (section revoke) and bench/results/revoke.md"
