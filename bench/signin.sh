#!/usr/bin/env bash
# Sign-in benchmark: warm app-password sign-ins through fedgate against nginx
# auth_basic (htpasswd with apr1 and with bcrypt hashes) and plain nginx
# proxy_pass, then the warm path while 200 clients spray wrong passwords:
# once against fedgate as configured by default (a 401 answered after
# `auth.failure_delay`; a 503 for a full hash queue at once) and once
# against a second fedgate with `failure_delay = "0s"`, so nothing holds
# the spray back, as against nginx.
#
# One nginx answers `200 ok` and is the upstream of every target. The nginx
# peers all proxy_pass to it with upstream keep-alive, so they differ only in
# authentication; fedgate has one `realm = "cloud"` route to it. Every
# target is sent the same Authorization header (plain proxy_pass passes it
# through unread), so request sizes match too.
#
# "Warm" means the credential was seen before: fedgate answers it from its
# verified-credential cache, while nginx re-hashes it on every request (that
# is how auth_basic works, and what the comparison is about). The spray
# checks that failures, which always cost one hash, cannot starve the warm
# path: fedgate hashes on a bounded pool and refuses the excess with 503,
# nginx hashes inside its event loop.
#
# Everything runs on 127.0.0.1 in one script, alternating targets within
# each round, because runs on a shared small machine swing by tens of percent
# and only same-run ratios are meaningful.
#
# Usage: bench/signin.sh   (or scripts/bench signin)
# Environment: ROUNDS (default 3), CARGO_TARGET_DIR, BENCH_KEEP=1 keeps the
# work dir with configs and logs for inspection.
set -euo pipefail

BENCH_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib.sh
. "$BENCH_ROOT/bench/lib.sh"

bench_rounds

RESULTS=$BENCH_ROOT/bench/RESULTS.md
SECTION_FILE=$BENCH_ROOT/bench/results/signin.md
REPRO='scripts/bench signin'

# The spray: many clients at once, each sending a wrong password as fast as
# it is answered. The warm-path run starts after the spray has ramped up and
# ends before it stops, so all of it is measured under spray.
SPRAY_CONNS=200
SPRAY_DURATION=12s
SPRAY_LEAD=1
WARM_SPRAY_THREADS=1
WARM_SPRAY_CONNS=64
WARM_SPRAY_DURATION=10s

# Targets from the requirement the figures are checked against.
TARGET_VS_PROXY=0.85
TARGET_VS_APR1=3
# Warm sign-ins with 10 policies against the same fedgate without.
TARGET_VS_NOPOLICY=0.95
TARGET_SPRAY_P99_MS=10
# The unthrottled spray must offer at least this many wrong passwords a
# second, or it does not test what a flood does to the warm path.
TARGET_SPRAY_OFFERED=1000

# bcrypt cost 5 as in the peer measurements: already ~10x slower than apr1
# per request; higher costs only widen the gap.
BCRYPT_COST=5

BENCH_USER=bench@contoso.example

# nginx is installed under /usr/sbin, which a non-login shell may lack.
PATH=$PATH:/usr/sbin:/sbin

bench_need 'nginx:nginx-light|nginx' wrk:wrk curl:curl openssl:openssl \
    htpasswd:apache2-utils base64:coreutils
bench_build_fedgate

bench_init
W=$BENCH_WORKDIR
# fedgate resolves relative paths against its working directory; starting
# everything from the work dir keeps any such file out of the repository.
cd "$W"

# Set by bench_free_port (through printf -v).
UP_PORT='' NGX_PORT='' APR1_PORT='' BCRYPT_PORT='' FG_PORT='' FG0_PORT='' FGP_PORT=''
bench_free_port UP_PORT
bench_free_port NGX_PORT
bench_free_port APR1_PORT
bench_free_port BCRYPT_PORT
bench_free_port FG_PORT
bench_free_port FG0_PORT
bench_free_port FGP_PORT

# --- fedgate store: the user and its app password ------------------------------
mkdir -p "$W/data"
cat >"$W/fedgate.toml" <<EOF
[server]
listen = []
listen_plain = ["127.0.0.1:$FG_PORT"]
tls_cert = "$W/cert.pem"
tls_key = "$W/key.pem"

[store]
url = "sqlite://$W/data/fedgate.db"
key_file = "$W/data/fedgate.key"

# The spray comes from the same loopback address as the measured client and
# names the same user; per-address lockout would lock that client out with
# it. What is measured is the cost of refusing every attempt, so lockout is
# off here, as it was when the figures below were first taken.
[lockout]
threshold = 0

[[route]]
path = "/"
upstream = "http://127.0.0.1:$UP_PORT"
realm = "cloud"
EOF
# The same fedgate and store, answering refusals at once: the spray is then
# limited only by what refusing costs. (Both servers read one SQLite store;
# admin commands run before either starts.)
sed -e "s/127.0.0.1:$FG_PORT/127.0.0.1:$FG0_PORT/" "$W/fedgate.toml" >"$W/fedgate0.toml"
cat >>"$W/fedgate0.toml" <<EOF

[auth]
failure_delay = "0s"
EOF

# The same fedgate again with a realistic set of 10 client access policies,
# none of which refuses the measured client: its warm sign-ins walk every
# rule (one has a group condition on every route, so the user-dependent
# pass runs on each sign-in too) and end in the default allow.
sed -e "s/127.0.0.1:$FG_PORT/127.0.0.1:$FGP_PORT/" "$W/fedgate.toml" >"$W/fedgate-policies.toml"
cat >>"$W/fedgate-policies.toml" <<'EOF'

[[policy]]
name = "org-passwords-corp-only"
credentials = ["password"]
not_networks = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"]
action = "deny"

[[policy]]
name = "known-bad-networks"
networks = ["198.51.100.0/24", "203.0.113.0/24", "2001:db8:bad::/48"]
action = "deny"

[[policy]]
name = "scripted-clients"
user_agents = ["regex:^(python-requests|Go-http-client|libwww-perl)/", "*sqlmap*"]
action = "deny"

[[policy]]
name = "mobile-blocked-off-activesync"
routes = ["/Microsoft-Server-ActiveSync"]
groups = ["Mobile-Blocked"]
action = "deny"

[[policy]]
name = "departed-staff"
groups = ["cn=Departed,ou=Groups,dc=contoso,dc=example"]
action = "deny"

[[policy]]
name = "enforced-no-passwords"
credentials = ["password"]
mfa_states = ["enforced"]
action = "deny"

[[policy]]
name = "outlook-web-outside"
routes = ["/owa", "/ews"]
user_agents = ["*Outlook*"]
not_networks = ["10.0.0.0/8"]
action = "deny"

[[policy]]
name = "no-sessions-on-dav"
routes = ["/dav"]
credentials = ["session"]
action = "deny"

[[policy]]
name = "corp-anything"
networks = ["10.0.0.0/8"]
credentials = ["password", "session"]
action = "allow"

[[policy]]
name = "office-apps"
credentials = ["app_password"]
user_agents = ["regex:^(Microsoft Office|Outlook|iOS|Android)"]
action = "allow"
EOF

# Enforced MFA: the state in which a Basic client must use an app password,
# which is the sign-in this benchmark is about.
bench_fedgate_app_password "$W/fedgate.toml" "$BENCH_USER"

# The same credential signs in everywhere, so every target gets the same
# request bytes.
basic() { printf '%s' "$1" | base64 -w0; }
AUTH_HEADER="Authorization: Basic $(basic "$BENCH_USER:$APP_PW")"

# Wrong credentials for the spray, sent in rotation: a wrong password of the
# usual shape and a wrong app-password-shaped one for the real user, and the
# same common password for a user that does not exist. fedgate spends one
# hash on each (a dummy one when there is nothing to compare with); nginx
# hashes the first two and refuses the unknown user without hashing, which
# makes its spray cheaper, not dearer.
SPRAY_CREDS=(
    "$BENCH_USER:Winter2026!"
    "$BENCH_USER:abcd-efgh-ijkl-mnop"
    "nobody@contoso.example:Winter2026!"
)

# --- htpasswd files -------------------------------------------------------------
# The password goes through stdin, not argv, where other users could read it.
apr1_hash=$(printf '%s\n' "$APP_PW" | openssl passwd -apr1 -stdin) ||
    bench_die "openssl passwd -apr1 failed"
printf '%s:%s\n' "$BENCH_USER" "$apr1_hash" >"$W/htpasswd-apr1"
bcrypt_line=$(printf '%s\n' "$APP_PW" | htpasswd -niB -C "$BCRYPT_COST" "$BENCH_USER") ||
    bench_die "htpasswd -B failed"
printf '%s\n' "$bcrypt_line" | head -n 1 >"$W/htpasswd-bcrypt"
# A tool that silently fell back to another scheme would change what is
# being compared.
case $(cat "$W/htpasswd-apr1") in
*:\$apr1\$*) ;;
*) bench_die "htpasswd-apr1 holds no apr1 hash" ;;
esac
case $(cat "$W/htpasswd-bcrypt") in
*:\$2[aby]\$0"$BCRYPT_COST"\$*) ;;
*) bench_die "htpasswd-bcrypt holds no bcrypt cost $BCRYPT_COST hash" ;;
esac
# nginx workers drop to an unprivileged user when started as root.
chmod 0644 "$W/htpasswd-apr1" "$W/htpasswd-bcrypt"

# --- upstream: nginx answering from memory --------------------------------------
bench_upstream_start "$UP_PORT"
UP_PID=$BENCH_LAST_PID

# nginx_proxy NAME PORT AUTH: an nginx proxy_pass to the upstream, tuned as a
# production install would be (without upstream keep-alive nginx opens a
# connection per request and runs at a third of the speed, which would
# flatter fedgate), with AUTH as extra location directives.
nginx_proxy() {
    local name=$1 port=$2 auth=$3
    bench_nginx_conf "$name" "
    # Logged like a normal install, buffered; fedgate logs every request too.
    access_log $W/$name-access.log combined buffer=64k flush=1s;

    upstream bench_upstream {
        server 127.0.0.1:$UP_PORT;
        keepalive 64;
    }

    server {
        listen 127.0.0.1:$port;
        location / {
$auth
            proxy_pass http://bench_upstream;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
        }
    }"
    bench_nginx_start "$name"
}

nginx_proxy proxy "$NGX_PORT" ""
NGX_PID=$BENCH_LAST_PID
nginx_proxy apr1 "$APR1_PORT" "
            auth_basic \"bench\";
            auth_basic_user_file $W/htpasswd-apr1;"
APR1_PID=$BENCH_LAST_PID
nginx_proxy bcrypt "$BCRYPT_PORT" "
            auth_basic \"bench\";
            auth_basic_user_file $W/htpasswd-bcrypt;"
BCRYPT_PID=$BENCH_LAST_PID

bench_log "starting fedgate"
bench_spawn "$W/fedgate.log" "$FEDGATE" --log-format json serve --config "$W/fedgate.toml"
FG_PID=$BENCH_LAST_PID
bench_spawn "$W/fedgate0.log" "$FEDGATE" --log-format json serve --config "$W/fedgate0.toml"
FG0_PID=$BENCH_LAST_PID
bench_spawn "$W/fedgate-policies.log" "$FEDGATE" --log-format json serve --config "$W/fedgate-policies.toml"
FGP_PID=$BENCH_LAST_PID

creds=(-u "$BENCH_USER:$APP_PW")
bench_wait_http upstream "http://127.0.0.1:$UP_PORT/" "$UP_PID" 100 ok ||
    bench_die "upstream nginx did not start"
bench_wait_http_with "nginx proxy" "http://127.0.0.1:$NGX_PORT/" "$NGX_PID" 100 ok "${creds[@]}" ||
    bench_die "nginx proxy did not start"
bench_wait_http_with "nginx apr1" "http://127.0.0.1:$APR1_PORT/" "$APR1_PID" 100 ok "${creds[@]}" ||
    bench_die "nginx auth_basic apr1 did not start"
bench_wait_http_with "nginx bcrypt" "http://127.0.0.1:$BCRYPT_PORT/" "$BCRYPT_PID" 100 ok "${creds[@]}" ||
    bench_die "nginx auth_basic bcrypt did not start"
# Generous: the store is opened and the in-memory index loaded at start.
bench_wait_http_with fedgate "http://127.0.0.1:$FG_PORT/" "$FG_PID" 300 ok "${creds[@]}" ||
    bench_die "fedgate did not start or refused the app password"
bench_wait_http_with "fedgate (failure_delay 0s)" "http://127.0.0.1:$FG0_PORT/" "$FG0_PID" 300 ok "${creds[@]}" ||
    bench_die "fedgate with failure_delay 0s did not start or refused the app password"
bench_wait_http_with "fedgate (10 policies)" "http://127.0.0.1:$FGP_PORT/" "$FGP_PID" 300 ok "${creds[@]}" ||
    bench_die "fedgate with 10 policies did not start or refused the app password"

# A target that let anyone in would measure nothing: each authenticating
# target must refuse no credentials and a wrong password.
status_of() {
    curl -sS -o /dev/null -w '%{http_code}' --max-time 5 "$@" 2>/dev/null || echo 000
}
for t in "apr1 $APR1_PORT" "bcrypt $BCRYPT_PORT" "fedgate $FG_PORT" "fedgate0 $FG0_PORT" "fedgate-policies $FGP_PORT"; do
    read -r name port <<<"$t"
    for args in "" "-u ${SPRAY_CREDS[0]}"; do
        # Word splitting of $args is intended: none or one -u USER:PASS.
        # shellcheck disable=SC2086
        code=$(status_of $args "http://127.0.0.1:$port/")
        [ "$code" = 401 ] || bench_die "$name answered $code, not 401, to ${args:-no credentials}"
    done
done
bench_log "authenticating targets refuse missing and wrong credentials"

# The spray script: rotates the wrong credentials and counts answers by
# status, since 401 (verified and refused) and 503 (hash pool full, refused
# at once) mean different things and wrk itself only counts non-2xx.
{
    echo 'local creds = {'
    for c in "${SPRAY_CREDS[@]}"; do
        printf '    "%s",\n' "$(basic "$c")"
    done
    cat <<'EOF'
}
local threads = {}

function setup(thread)
    table.insert(threads, thread)
end

function init(args)
    statuses = {}
    reqs = {}
    for i, c in ipairs(creds) do
        reqs[i] = wrk.format("GET", "/", { ["Authorization"] = "Basic " .. c })
    end
    n = 0
end

function request()
    n = n + 1
    return reqs[(n % #reqs) + 1]
end

function response(status, headers, body)
    statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
    local total = {}
    for _, t in ipairs(threads) do
        for k, v in pairs(t:get("statuses")) do
            total[k] = (total[k] or 0) + v
        end
    end
    for k, v in pairs(total) do
        io.write(string.format("status %d %d\n", k, v))
    end
end
EOF
} >"$W/spray.lua"

# --- measurement ----------------------------------------------------------------
# Warm runs: one wrk per target. Spray runs: the warm path of a target
# measured while the spray hits the same target.
RUNS=(nginx apr1 bcrypt fedgate fedgate-policies spray-fedgate spray0-fedgate spray-bcrypt)
WARM=(nginx apr1 bcrypt fedgate fedgate-policies)
SPRAYS=(spray-fedgate spray0-fedgate spray-bcrypt)
declare -A LABEL=(
    [nginx]="nginx \`proxy_pass\`, upstream keep-alive, no auth"
    [apr1]="nginx \`auth_basic\`, htpasswd apr1"
    [bcrypt]="nginx \`auth_basic\`, htpasswd bcrypt cost $BCRYPT_COST"
    [fedgate]="fedgate, app password, \`realm = \"cloud\"\`"
    [fedgate-policies]="fedgate, the same with 10 \`[[policy]]\` rules"
    [spray-fedgate]="fedgate, default \`failure_delay = \"1s\"\`"
    [spray0-fedgate]="fedgate, \`failure_delay = \"0s\"\` (unthrottled spray)"
    [spray-bcrypt]="nginx \`auth_basic\` bcrypt cost $BCRYPT_COST"
)
declare -A PORT_OF=(
    [nginx]=$NGX_PORT [apr1]=$APR1_PORT [bcrypt]=$BCRYPT_PORT [fedgate]=$FG_PORT [fedgate-policies]=$FGP_PORT
    [spray-fedgate]=$FG_PORT [spray0-fedgate]=$FG0_PORT [spray-bcrypt]=$BCRYPT_PORT
)
SERVER_NAMES=(upstream nginx apr1 bcrypt fedgate fedgate0 fedgate-policies)
SERVER_PIDS=("$UP_PID" "$NGX_PID" "$APR1_PID" "$BCRYPT_PID" "$FG_PID" "$FG0_PID" "$FGP_PID")
declare -A RPS P50 P99 ERR CPU
declare -A S_RPS S_401 S_503 S_OTHER S_SOCK
CLK=$(bench_clk_tck)
# Other load on the machine moves every figure; record it next to them.
LOAD_BEFORE=$(bench_loadavg)

# cpu_row BEFORE AFTER WRK_SECONDS SPRAY_SECONDS: one table row of CPU
# seconds (wrk, spray wrk, then each server) from two bench_cpu_ticks samples
# given as space-separated lists.
cpu_row() {
    awk -v b="$1" -v a="$2" -v w="$3" -v s="$4" -v clk="$CLK" 'BEGIN {
        nb = split(b, vb, " "); split(a, va, " ")
        printf "%.1f | %s", w, s
        for (i = 1; i <= nb; i++) printf " | %.1f", (va[i] - vb[i]) / clk
    }'
}

check_alive() {
    local i
    for i in "${!SERVER_PIDS[@]}"; do
        bench_alive "${SERVER_PIDS[i]}" ||
            bench_die "${SERVER_NAMES[i]} (pid ${SERVER_PIDS[i]}) died during the run against $1"
    done
}

# warm_run ROUND TARGET
warm_run() {
    local r=$1 t=$2 url out wu ws rps p50 p99 err
    local -a before after
    url="http://127.0.0.1:${PORT_OF[$t]}/"
    out=$W/wrk-$r-$t.txt
    bench_wrk_warmup "$url" -H "$AUTH_HEADER"
    mapfile -t before < <(bench_cpu_ticks "${SERVER_PIDS[@]}")
    bench_wrk "$url" "$out" -H "$AUTH_HEADER"
    mapfile -t after < <(bench_cpu_ticks "${SERVER_PIDS[@]}")
    check_alive "$t"
    read -r rps p50 p99 err < <(bench_wrk_parse "$out") ||
        bench_die "could not parse wrk output for $t: $(cat "$out")"
    RPS[$r,$t]=$rps P50[$r,$t]=$p50 P99[$r,$t]=$p99 ERR[$r,$t]=$err
    read -r wu ws <"$out.cpu"
    CPU[$r,$t]=$(cpu_row "${before[*]}" "${after[*]}" "$(awk -v u="$wu" -v s="$ws" 'BEGIN { print u + s }')" -)
    bench_log "  $t: $rps req/s, p50 $p50 ms, p99 $p99 ms, errors $err"
    [ "$err" -eq 0 ] || bench_log "  WARNING: $t had $err socket errors or non-2xx answers"
}

# spray_run ROUND RUN: the spray against the run's target, and 1 s into it
# the warm path of the same target, measured alone.
spray_run() {
    local r=$1 t=$2 url out sout spid wu ws rps p50 p99 err
    local -a before after sb sa
    url="http://127.0.0.1:${PORT_OF[$t]}/"
    out=$W/wrk-$r-$t.txt
    sout=$W/spray-$r-$t.txt
    # Fills the verified-credential cache and the keep-alive pools first, as
    # for the warm runs.
    bench_wrk_warmup "$url" -H "$AUTH_HEADER"
    bench_spawn "$sout" wrk -t1 -c"$SPRAY_CONNS" -d"$SPRAY_DURATION" \
        --timeout "$BENCH_WRK_TIMEOUT" -s "$W/spray.lua" "$url"
    spid=$BENCH_LAST_PID
    sleep "$SPRAY_LEAD"
    bench_alive "$spid" || bench_die "spray wrk exited early: $(cat "$sout")"
    mapfile -t before < <(bench_cpu_ticks "${SERVER_PIDS[@]}")
    mapfile -t sb < <(bench_cpu_ticks "$spid")
    bench_wrk_sized "$WARM_SPRAY_THREADS" "$WARM_SPRAY_CONNS" "$WARM_SPRAY_DURATION" \
        "$url" "$out" -H "$AUTH_HEADER"
    mapfile -t after < <(bench_cpu_ticks "${SERVER_PIDS[@]}")
    mapfile -t sa < <(bench_cpu_ticks "$spid")
    # Still running here: the warm run lay entirely inside the spray.
    bench_alive "$spid" || bench_log "  WARNING: the spray ended before the warm run did"
    bench_reap "$spid" || bench_die "spray wrk against $t failed: $(cat "$sout")"
    check_alive "$t"
    read -r rps p50 p99 err < <(bench_wrk_parse "$out") ||
        bench_die "could not parse wrk output for $t: $(cat "$out")"
    RPS[$r,$t]=$rps P50[$r,$t]=$p50 P99[$r,$t]=$p99 ERR[$r,$t]=$err
    read -r wu ws <"$out.cpu"
    CPU[$r,$t]=$(cpu_row "${before[*]}" "${after[*]}" \
        "$(awk -v u="$wu" -v s="$ws" 'BEGIN { print u + s }')" \
        "$(awk -v b="${sb[0]}" -v a="${sa[0]}" -v clk="$CLK" 'BEGIN { printf "%.1f", (a - b) / clk }')")
    S_RPS[$r,$t]=$(awk '/^Requests\/sec:/ { print $2 }' "$sout")
    S_401[$r,$t]=$(awk '$1 == "status" && $2 == 401 { print $3 }' "$sout")
    S_503[$r,$t]=$(awk '$1 == "status" && $2 == 503 { print $3 }' "$sout")
    S_OTHER[$r,$t]=$(awk '$1 == "status" && $2 != 401 && $2 != 503 { n += $3 } END { print n + 0 }' "$sout")
    S_SOCK[$r,$t]=$(awk '/Socket errors:/ {
            line = $0
            while (match(line, /[0-9]+/)) { n += substr(line, RSTART, RLENGTH); line = substr(line, RSTART + RLENGTH) }
        } END { print n + 0 }' "$sout")
    : "${S_RPS[$r,$t]:=0}" "${S_401[$r,$t]:=0}" "${S_503[$r,$t]:=0}"
    bench_log "  $t: warm $rps req/s, p50 $p50 ms, p99 $p99 ms, errors $err;" \
        "spray ${S_RPS[$r,$t]} req/s: 401 ${S_401[$r,$t]}, 503 ${S_503[$r,$t]}," \
        "other ${S_OTHER[$r,$t]}, socket errors ${S_SOCK[$r,$t]}"
    [ "$err" -eq 0 ] || bench_log "  WARNING: warm path of $t had $err socket errors or non-2xx answers"
}

for ((r = 1; r <= ROUNDS; r++)); do
    # Rotate the order each round so no target always runs first or last
    # (thermal state, page cache, neighbours' load drift over a run).
    for ((k = 0; k < ${#RUNS[@]}; k++)); do
        t=${RUNS[(k + r - 1) % ${#RUNS[@]}]}
        bench_log "round $r/$ROUNDS: $t (port ${PORT_OF[$t]})"
        case $t in
        spray*) spray_run "$r" "$t" ;;
        *) warm_run "$r" "$t" ;;
        esac
    done
done

# --- report ---------------------------------------------------------------------
declare -A MED_RPS MED_P50 MED_P99
bench_medians "${RUNS[@]}"
RATIO_PROXY=$(bench_ratio "${MED_RPS[fedgate]}" "${MED_RPS[nginx]}")
RATIO_APR1=$(bench_ratio "${MED_RPS[fedgate]}" "${MED_RPS[apr1]}")
RATIO_BCRYPT=$(bench_ratio "${MED_RPS[fedgate]}" "${MED_RPS[bcrypt]}")
RATIO_POLICIES=$(bench_ratio "${MED_RPS[fedgate-policies]}" "${MED_RPS[fedgate]}")
SPRAY_P99=${MED_P99[spray-fedgate]}
SPRAY_P99_MAX=$(for ((r = 1; r <= ROUNDS; r++)); do echo "${P99[$r,spray-fedgate]}"; done | sort -g | tail -n 1)
SPRAY0_P99=${MED_P99[spray0-fedgate]}
SPRAY0_P99_MAX=$(for ((r = 1; r <= ROUNDS; r++)); do echo "${P99[$r,spray0-fedgate]}"; done | sort -g | tail -n 1)
SPRAY0_OFFERED=$(for ((r = 1; r <= ROUNDS; r++)); do echo "${S_RPS[$r,spray0-fedgate]}"; done | sort -g | head -n 1)
WARM_ERR=0 SPRAY_WARM_ERR=0
for ((r = 1; r <= ROUNDS; r++)); do
    for t in "${WARM[@]}"; do WARM_ERR=$((WARM_ERR + ERR[$r,$t])); done
    for t in "${SPRAYS[@]}"; do SPRAY_WARM_ERR=$((SPRAY_WARM_ERR + ERR[$r,$t])); done
done
declare -A TOT_401 TOT_503 TOT_OTHER TOT_SOCK
for t in "${SPRAYS[@]}"; do
    TOT_401[$t]=0 TOT_503[$t]=0 TOT_OTHER[$t]=0 TOT_SOCK[$t]=0
    for ((r = 1; r <= ROUNDS; r++)); do
        TOT_401[$t]=$((TOT_401[$t] + S_401[$r,$t]))
        TOT_503[$t]=$((TOT_503[$t] + S_503[$r,$t]))
        TOT_OTHER[$t]=$((TOT_OTHER[$t] + S_OTHER[$r,$t]))
        TOT_SOCK[$t]=$((TOT_SOCK[$t] + S_SOCK[$r,$t]))
    done
done
# fedgate's own complaints during the runs (one JSON object per line).
FG_LOGS=("$W/fedgate.log" "$W/fedgate0.log" "$W/fedgate-policies.log")
FG_WARN=$(cat "${FG_LOGS[@]}" | grep -c '"level":"WARN"' || true)
FG_ERROR=$(cat "${FG_LOGS[@]}" | grep -c '"level":"ERROR"' || true)
if [ "$((FG_WARN + FG_ERROR))" -gt 0 ]; then
    bench_log "fedgate logged $FG_WARN warnings and $FG_ERROR errors; distinct messages:"
    cat "${FG_LOGS[@]}" | grep -E '"level":"(WARN|ERROR)"' |
        sed -n 's/.*"message":"\([^"]*\)".*/\1/p' | sort | uniq -c | sort -rn | head -n 10 >&2 || true
fi

mkdir -p "$(dirname "$SECTION_FILE")"
{
    workers=${BENCH_NGINX_WORKERS:-2}
    echo "## Sign-in: fedgate app passwords vs nginx auth_basic and proxy_pass"
    echo
    cat <<EOF
Reproduce with \`$REPRO\` (\`ROUNDS=$ROUNDS\`; the release build is part of it).
Each warm run: \`$(bench_wrk_cmd) -H "Authorization: Basic ..." URL\`,
after a $BENCH_WARMUP warm-up with the same header; keep-alive, all on 127.0.0.1,
wrk sharing the cores with the servers. Every target gets the same header:
one user, one app password (\`xxxx-xxxx-xxxx-xxxx\`). The upstream is one
nginx (\`return 200 "ok\\n"\`, $workers workers) shared by all targets. The
nginx peers ($workers workers each) all \`proxy_pass\` to it with
\`upstream { keepalive 64; }\`, \`proxy_http_version 1.1\`,
\`proxy_set_header Connection ""\` and a buffered access log, so they differ
only in \`auth_basic\`: none, an htpasswd with the password's apr1 hash
(\`openssl passwd -apr1\`), or its bcrypt hash (\`htpasswd -B -C $BCRYPT_COST\`).
nginx hashes the password on every request; fedgate (plain listener, one
\`realm = "cloud"\` route, user in MFA state \`enforced\`, app passwords
allowed, JSON logs to a file) answers a credential it verified before from
its cache. Targets run in rotating order within each round; the summary
shows medians over the rounds.
EOF
    echo
    echo "### Warm sign-ins"
    echo
    echo "| target | req/s | p50 ms | p99 ms |"
    echo "|---|---:|---:|---:|"
    for t in "${WARM[@]}"; do
        printf '| %s | %.0f | %.2f | %.2f |\n' "${LABEL[$t]}" "${MED_RPS[$t]}" "${MED_P50[$t]}" "${MED_P99[$t]}"
    done
    echo
    echo "- **fedgate / nginx proxy_pass**: req/s **${RATIO_PROXY}x**" \
        "(target >= $TARGET_VS_PROXY: $(bench_verdict "$RATIO_PROXY" '>=' "$TARGET_VS_PROXY"))"
    echo "- **fedgate / nginx auth_basic apr1**: req/s **${RATIO_APR1}x**" \
        "(target >= $TARGET_VS_APR1: $(bench_verdict "$RATIO_APR1" '>=' "$TARGET_VS_APR1"))"
    echo "- fedgate / nginx auth_basic bcrypt: req/s ${RATIO_BCRYPT}x (no target; for scale)"
    echo "- **fedgate with 10 policies / without**: req/s **${RATIO_POLICIES}x**" \
        "(target >= $TARGET_VS_NOPOLICY: $(bench_verdict "$RATIO_POLICIES" '>=' "$TARGET_VS_NOPOLICY")):" \
        "a third fedgate on the same store with a set of 10 \`[[policy]]\` rules (networks, globs and" \
        "regular expressions on the user agent, groups, MFA states), none refusing the measured" \
        "client, so every sign-in walks them all (one group rule applies on every route, so the" \
        "rules on the user are asked too)"
    if [ "$WARM_ERR" -ne 0 ]; then
        echo
        echo "**Warning**: $WARM_ERR socket errors or non-2xx answers over the warm runs (see the errors column)."
    fi
    echo
    echo "### Warm path under a password spray"
    echo
    cat <<EOF
While \`wrk -t1 -c$SPRAY_CONNS -d$SPRAY_DURATION --timeout $BENCH_WRK_TIMEOUT\` sends wrong
passwords to a target (in rotation: \`Winter2026!\` and a wrong
app-password-shaped one for the real user, \`Winter2026!\` for an unknown
user; counted by status with a wrk Lua script), the warm path of the same
target is measured from ${SPRAY_LEAD} s into the spray with
\`wrk -t$WARM_SPRAY_THREADS -c$WARM_SPRAY_CONNS -d$WARM_SPRAY_DURATION --latency --timeout $BENCH_WRK_TIMEOUT\`
and the correct app password. fedgate spends one argon2 verification on each
wrong password, on a bounded pool, and answers 503 at once when the pool's
queue is full; nginx runs bcrypt in its event loop for the real user and
refuses the unknown user without hashing.

fedgate is measured twice: with the default \`failure_delay = "1s"\` (a
401 is answered that long after the sign-in began) and with
\`failure_delay = "0s"\` (a second fedgate on the same store, otherwise
identical). Lockout is off in both (\`[lockout] threshold = 0\`): the spray
shares the measured client's address and user name, so it would lock the
measured client out with it. Without lockout every attempt is a new guess
that costs one argon2; 200 connections keep the pool's queue full, and a
503 (hash queue full) is answered at once, without \`failure_delay\`. So
the delay throttles only the few attempts that get a 401, the spray offers
what refusing costs in both rows, and both compare with nginx. (With
lockout on, as by default, a repeat of one of the last wrong secrets is
refused without argon2 and its 401 waits \`failure_delay\`: this spray,
three secrets repeated, would be held to one attempt per connection a
second.)
EOF
    echo
    echo "| target | warm req/s | warm p50 ms | warm p99 ms | spray req/s (median) | spray 401 | spray 503 | spray other | spray socket errors |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    for t in "${SPRAYS[@]}"; do
        v=()
        for ((r = 1; r <= ROUNDS; r++)); do v+=("${S_RPS[$r,$t]}"); done
        printf '| %s | %.0f | %.2f | %.2f | %.0f | %d | %d | %d | %d |\n' "${LABEL[$t]}" \
            "${MED_RPS[$t]}" "${MED_P50[$t]}" "${MED_P99[$t]}" "$(bench_median "${v[@]}")" \
            "${TOT_401[$t]}" "${TOT_503[$t]}" "${TOT_OTHER[$t]}" "${TOT_SOCK[$t]}"
    done
    echo
    echo "Spray counts are totals over the $ROUNDS rounds."
    echo
    echo "- **fedgate warm p99 under spray**: **$(printf '%.2f' "$SPRAY_P99") ms** median," \
        "$(printf '%.2f' "$SPRAY_P99_MAX") ms worst round" \
        "(target < $TARGET_SPRAY_P99_MS ms: $(bench_verdict "$SPRAY_P99" '<' "$TARGET_SPRAY_P99_MS") on the median," \
        "$(bench_verdict "$SPRAY_P99_MAX" '<' "$TARGET_SPRAY_P99_MS") in every round)"
    echo "- **fedgate warm p99 under the unthrottled spray** (\`failure_delay = \"0s\"\`):" \
        "**$(printf '%.2f' "$SPRAY0_P99") ms** median, $(printf '%.2f' "$SPRAY0_P99_MAX") ms worst round" \
        "(target < $TARGET_SPRAY_P99_MS ms: $(bench_verdict "$SPRAY0_P99" '<' "$TARGET_SPRAY_P99_MS") on the median," \
        "$(bench_verdict "$SPRAY0_P99_MAX" '<' "$TARGET_SPRAY_P99_MS") in every round)"
    echo "- unthrottled spray offered: $(printf '%.0f' "$SPRAY0_OFFERED") wrong passwords/s in its slowest round" \
        "(target >= $TARGET_SPRAY_OFFERED: $(bench_verdict "$SPRAY0_OFFERED" '>=' "$TARGET_SPRAY_OFFERED"))"
    echo "- nginx auth_basic bcrypt warm p99 under the same spray:" \
        "$(printf '%.2f' "${MED_P99[spray-bcrypt]}") ms" \
        "($(bench_ratio "${MED_P99[spray-bcrypt]}" "$SPRAY0_P99")x fedgate's with the unthrottled spray)"
    if [ "$SPRAY_WARM_ERR" -ne 0 ]; then
        echo
        echo "**Warning**: $SPRAY_WARM_ERR socket errors or non-2xx answers on the warm path under spray (see the errors column)."
    fi
    echo
    echo "### Per round"
    echo
    echo "| round | run | req/s | p50 ms | p99 ms | errors | fedgate/proxy_pass | fedgate/apr1 | spray 401 | spray 503 |"
    echo "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    for ((r = 1; r <= ROUNDS; r++)); do
        for t in "${RUNS[@]}"; do
            rp='' ra='' s1='' s5=''
            if [ "$t" = fedgate ]; then
                rp="$(bench_ratio "${RPS[$r,fedgate]}" "${RPS[$r,nginx]}")x"
                ra="$(bench_ratio "${RPS[$r,fedgate]}" "${RPS[$r,apr1]}")x"
            fi
            if [ "$t" = fedgate-policies ]; then
                rp="$(bench_ratio "${RPS[$r,fedgate-policies]}" "${RPS[$r,fedgate]}")x of fedgate"
            fi
            case $t in spray*) s1=${S_401[$r,$t]} s5=${S_503[$r,$t]} ;; esac
            printf '| %d | %s | %.0f | %.2f | %.2f | %d | %s | %s | %s | %s |\n' "$r" "$t" \
                "${RPS[$r,$t]}" "${P50[$r,$t]}" "${P99[$r,$t]}" "${ERR[$r,$t]}" "$rp" "$ra" "$s1" "$s5"
        done
    done
    echo
    echo "### CPU seconds used during each measured run"
    echo
    echo "User+system CPU seconds per process over each measured run (10 s), with"
    echo "$(nproc) cores shared by all: how the machine was split between the load"
    echo "generators, the upstream and the target. In spray runs, \"spray wrk\" is"
    echo "the spraying wrk over the same window."
    echo
    echo "| round | run | wrk | spray wrk | upstream nginx | nginx proxy | nginx apr1 | nginx bcrypt | fedgate | fedgate (0s delay) | fedgate (10 policies) |"
    echo "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    for ((r = 1; r <= ROUNDS; r++)); do
        for t in "${RUNS[@]}"; do
            echo "| $r | $t | ${CPU[$r,$t]} |"
        done
    done
    echo
    echo "### Machine"
    echo
    bench_machine_facts
    echo "- openssl: $(openssl version 2>/dev/null | awk '{ print $2 }');" \
        "apache2-utils (htpasswd): $(dpkg-query -W -f '${Version}' apache2-utils 2>/dev/null || echo unknown)"
    echo "- load average (1/5/15 min) before the runs: $LOAD_BEFORE; after: $(bench_loadavg)"
    echo "- fedgate: $(bench_git_rev), release profile;" \
        "its log over the runs: $FG_WARN warnings, $FG_ERROR errors"
} >"$SECTION_FILE"

bench_replace_section "$RESULTS" signin "$SECTION_FILE"
cat "$SECTION_FILE"
bench_log "results written to bench/RESULTS.md (section signin) and bench/results/signin.md"
