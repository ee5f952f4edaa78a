#!/usr/bin/env bash
# Forward-auth benchmark: what fedgate's decision costs a front proxy. One
# nginx front serves three sites on the same upstream: (a) plain proxy_pass,
# no auth_request (the floor); (b) auth_request to a trivial always-200
# endpoint (an nginx of its own, `return 200;`, empty body); (c) auth_request to
# fedgate's forward-auth endpoint, with warm (cached) app-password
# credentials. (b) and (c) differ only in who answers the subrequest, so
# their ratio is the cost of the decision. Everything runs on 127.0.0.1 in
# one script, alternating targets within each round, because runs on a
# shared 2-core machine swing by tens of percent and only same-run ratios
# are meaningful.
#
# Usage: bench/forward.sh   (or scripts/bench forward)
# Environment: ROUNDS (default 3), CARGO_TARGET_DIR, BENCH_KEEP=1 keeps the
# work dir with configs and logs for inspection.
set -euo pipefail

BENCH_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib.sh
. "$BENCH_ROOT/bench/lib.sh"

bench_rounds

RESULTS=$BENCH_ROOT/bench/RESULTS.md
SECTION_FILE=$BENCH_ROOT/bench/results/forward.md
REPRO='scripts/bench forward'
BENCH_USER=wrk@contoso.example
ENDPOINT=/_fedgate/auth
# What fedgate's answer may cost the front proxy, as the trivial
# endpoint's req/s over fedgate's.
GOAL=1.20

# nginx is installed under /usr/sbin, which a non-login shell may lack.
PATH=$PATH:/usr/sbin:/sbin

bench_need 'nginx:nginx-light|nginx' wrk:wrk curl:curl
bench_build_fedgate

bench_init
W=$BENCH_WORKDIR
# fedgate resolves relative paths against its working directory; starting
# everything from the work dir keeps any such file out of the repository.
cd "$W"

bench_free_port UP_PORT
bench_free_port AUTH_PORT
bench_free_port PLAIN_PORT
bench_free_port TRIVIAL_PORT
bench_free_port FWD_PORT
bench_free_port FG_PORT

# --- the upstream -------------------------------------------------------------
bench_upstream_start "$UP_PORT"
UP_PID=$BENCH_LAST_PID

# --- the trivial auth endpoint: always 200, no body ---------------------------
# No body, as fedgate sends none: nginx reads no body of an auth_request
# answer, so an answer with one (`return 200 "ok\n"`) costs it the upstream
# keep-alive connection, a new connection per request.
bench_nginx_conf trivial "
    server {
        listen 127.0.0.1:$AUTH_PORT;
        access_log off;
        location / {
            return 200;
        }
    }"
bench_nginx_start trivial
AUTH_PID=$BENCH_LAST_PID

# --- fedgate: the endpoint, one decide-only cloud route ----------------------
SECRET=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
(umask 077 && printf '%s\n' "$SECRET" >"$W/forward-auth.secret")
cat >"$W/fedgate.toml" <<EOF
[server]
listen = []
listen_plain = ["127.0.0.1:$FG_PORT"]
tls_cert = "$W/cert.pem"
tls_key = "$W/key.pem"
max_connections = 10000
trusted_proxies = ["127.0.0.1/32"]

[store]
url = "sqlite://$W/fedgate.db"
key_file = "$W/fedgate.key"

[forward_auth]
path = "$ENDPOINT"
secret_file = "$W/forward-auth.secret"

[[route]]
name = "app"
path = "/"
realm = "cloud"
EOF

bench_fedgate_app_password "$W/fedgate.toml" "$BENCH_USER"
AUTH_HEADER="Authorization: Basic $(printf '%s' "$BENCH_USER:$APP_PW" | base64 -w0)"

bench_log "starting fedgate"
bench_spawn "$W/fedgate.log" "$FEDGATE" --log-format json serve --config "$W/fedgate.toml"
FG_PID=$BENCH_LAST_PID

# --- the front nginx: three sites, one upstream ------------------------------
# The README's auth_request configuration, tuned as the proxy benchmark's
# nginx is (upstream keep-alive on both the upstream and the auth
# subrequests); the trivial site's subrequest is the same but to the
# upstream's `return 200`.
auth_site() {
    local port=$1 auth_upstream=$2 auth_uri=$3
    cat <<EOF
    server {
        listen 127.0.0.1:$port;
        location / {
            auth_request /_auth;
            auth_request_set \$fedgate_user \$upstream_http_remote_user;
            auth_request_set \$fedgate_identity \$upstream_http_x_remote_user;
            auth_request_set \$fedgate_credential \$upstream_http_x_fedgate_credential;
            proxy_set_header Remote-User \$fedgate_user;
            proxy_set_header X-Remote-User \$fedgate_identity;
            proxy_set_header X-Fedgate-Credential \$fedgate_credential;
            proxy_set_header Authorization "";
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_pass http://bench_upstream;
        }
        location = /_auth {
            internal;
            proxy_pass http://$auth_upstream$auth_uri;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_set_header X-Original-URI \$request_uri;
            proxy_set_header X-Original-Method \$request_method;
            # A client's own copies of the other convention are dropped (fedgate
            # refuses a request described twice).
            proxy_set_header X-Forwarded-Uri "";
            proxy_set_header X-Forwarded-Method "";
            proxy_set_header X-Forwarded-For \$remote_addr;
            proxy_set_header X-Forwarded-Proto \$scheme;
            proxy_set_header X-Forwarded-Host \$host;
            proxy_set_header X-Fedgate-Secret "$SECRET";
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
EOF
}
bench_nginx_conf front "
    # Logged like a normal install, buffered; fedgate logs every request too.
    access_log $W/front-access.log combined buffer=64k flush=1s;

    upstream bench_upstream {
        server 127.0.0.1:$UP_PORT;
        keepalive 64;
    }
    upstream bench_trivial {
        server 127.0.0.1:$AUTH_PORT;
        keepalive 64;
    }
    upstream bench_fedgate {
        server 127.0.0.1:$FG_PORT;
        keepalive 64;
    }

    server {
        listen 127.0.0.1:$PLAIN_PORT;
        location / {
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_pass http://bench_upstream;
        }
    }
$(auth_site "$TRIVIAL_PORT" bench_trivial /)
$(auth_site "$FWD_PORT" bench_fedgate "$ENDPOINT")"
bench_nginx_start front
NGX_PID=$BENCH_LAST_PID

bench_wait_http upstream "http://127.0.0.1:$UP_PORT/" "$UP_PID" 100 ok ||
    bench_die "upstream nginx did not start"
bench_wait_http "trivial endpoint" "http://127.0.0.1:$AUTH_PORT/" "$AUTH_PID" 100 ||
    bench_die "trivial auth nginx did not start"
# Generous: the first start generates the self-signed certificate.
bench_wait_http_with "fedgate through nginx" "http://127.0.0.1:$FWD_PORT/" "$FG_PID" 300 ok -H "$AUTH_HEADER" ||
    bench_die "fedgate's forward auth did not answer through nginx"
bench_alive "$NGX_PID" || bench_die "front nginx did not start"
# Fail closed: without credentials the front must refuse.
code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$FWD_PORT/")
[ "$code" = 401 ] || bench_die "fedgate site answered $code without credentials, expected 401"

# --- measurement --------------------------------------------------------------
NAMES=(plain trivial fedgate)
declare -A LABEL=(
    [plain]="nginx \`proxy_pass\`, no \`auth_request\`"
    [trivial]="nginx \`auth_request\` to nginx \`return 200;\`"
    [fedgate]="nginx \`auth_request\` to fedgate (warm app password)"
)
declare -A URL=(
    [plain]="http://127.0.0.1:$PLAIN_PORT/"
    [trivial]="http://127.0.0.1:$TRIVIAL_PORT/"
    [fedgate]="http://127.0.0.1:$FWD_PORT/"
)
declare -A RPS P50 P99 ERR CPU
CLK=$(bench_clk_tck)
LOAD_BEFORE=$(bench_loadavg)

for ((r = 1; r <= ROUNDS; r++)); do
    # Rotate the order each round so no target always runs first or last.
    for ((k = 0; k < ${#NAMES[@]}; k++)); do
        t=${NAMES[(k + r - 1) % ${#NAMES[@]}]}
        out=$W/wrk-$r-$t.txt
        bench_log "round $r/$ROUNDS: $t (${URL[$t]})"
        bench_wrk_warmup "${URL[$t]}" -H "$AUTH_HEADER"
        mapfile -t before < <(bench_cpu_ticks "$UP_PID" "$NGX_PID" "$AUTH_PID" "$FG_PID")
        bench_wrk "${URL[$t]}" "$out" -H "$AUTH_HEADER"
        mapfile -t after < <(bench_cpu_ticks "$UP_PID" "$NGX_PID" "$AUTH_PID" "$FG_PID")
        for pid in "$UP_PID" "$NGX_PID" "$AUTH_PID" "$FG_PID"; do
            bench_alive "$pid" || bench_die "pid $pid died during the run against $t"
        done
        read -r rps p50 p99 err < <(bench_wrk_parse "$out") ||
            bench_die "could not parse wrk output for $t: $(cat "$out")"
        RPS[$r,$t]=$rps P50[$r,$t]=$p50 P99[$r,$t]=$p99 ERR[$r,$t]=$err
        read -r wu ws <"$out.cpu"
        # CPU seconds per process, and microseconds of the front nginx and
        # of the auth endpoint (trivial nginx or fedgate) per request.
        CPU[$r,$t]=$(awk -v wu="$wu" -v ws="$ws" -v clk="$CLK" -v rps="$rps" -v d="${BENCH_WRK_DURATION%s}" \
            -v a0="${before[0]}" -v a1="${after[0]}" \
            -v b0="${before[1]}" -v b1="${after[1]}" \
            -v c0="${before[2]}" -v c1="${after[2]}" \
            -v e0="${before[3]}" -v e1="${after[3]}" \
            'BEGIN { n = rps * d; if (n < 1) n = 1;
                     printf "%.1f | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f", wu + ws,
                        (a1 - a0) / clk, (b1 - b0) / clk, (c1 - c0) / clk, (e1 - e0) / clk,
                        (b1 - b0) / clk / n * 1e6, (c1 - c0) / clk / n * 1e6, (e1 - e0) / clk / n * 1e6 }')
        bench_log "  $t: $rps req/s, p50 $p50 ms, p99 $p99 ms, errors $err"
        [ "$err" -eq 0 ] || bench_log "  WARNING: $t had $err socket errors or non-2xx answers"
    done
done

# --- report -------------------------------------------------------------------
declare -A MED_RPS MED_P50 MED_P99
bench_medians "${NAMES[@]}"
# The cost of the decision: how many trivial answers per fedgate answer.
RATIO_COST=$(bench_ratio "${MED_RPS[trivial]}" "${MED_RPS[fedgate]}")
RATIO_P99=$(bench_ratio "${MED_P99[fedgate]}" "${MED_P99[trivial]}")
TOTAL_ERR=0
for k in "${!ERR[@]}"; do TOTAL_ERR=$((TOTAL_ERR + ERR[$k])); done

mkdir -p "$(dirname "$SECTION_FILE")"
{
    workers=${BENCH_NGINX_WORKERS:-2}
    echo "## Forward auth: nginx auth_request to fedgate vs to a trivial endpoint"
    echo
    cat <<EOF
Reproduce with \`$REPRO\` (\`ROUNDS=$ROUNDS\`; the release build is part of it).
Each measured run: \`$(bench_wrk_cmd) -H "Authorization: Basic ..." URL\`,
after a $BENCH_WARMUP warm-up with the same header (so fedgate's
verified-credential cache is warm: one user, one app password); keep-alive,
all on 127.0.0.1, wrk sharing the cores with the servers. One front nginx
($workers workers, buffered access log) serves the three sites; all
\`proxy_pass\` to one upstream nginx (\`return 200 "ok\\n"\`, $workers workers)
with \`upstream { keepalive 64; }\`, \`proxy_http_version 1.1\` and
\`proxy_set_header Connection ""\`. The two \`auth_request\` sites are the
README's configuration (\`X-Original-URI\`, \`X-Original-Method\`,
\`X-Forwarded-*\`, the caller secret, three identity headers copied with
\`auth_request_set\`), their subrequests on keep-alive connections too; they
differ only in who answers the subrequest: an nginx of its own
($workers workers, \`return 200;\`, no body, no access log), or fedgate (plain listener, \`[forward_auth]\` with a
\`secret_file\`, \`trusted_proxies = ["127.0.0.1/32"]\`, one decide-only
\`realm = "cloud"\` route, JSON logs to a file: an access-log line per
subrequest). Targets run in rotating order within each round; the summary
shows medians over the rounds.
EOF
    echo
    echo "| target | req/s | p50 ms | p99 ms |"
    echo "|---|---:|---:|---:|"
    for t in "${NAMES[@]}"; do
        printf '| %s | %.0f | %.2f | %.2f |\n' "${LABEL[$t]}" "${MED_RPS[$t]}" "${MED_P50[$t]}" "${MED_P99[$t]}"
    done
    echo
    echo "**Cost of fedgate's decision to the front proxy** (trivial req/s over fedgate req/s):"
    echo "**${RATIO_COST}x** (goal <= $GOAL: $(bench_verdict "$RATIO_COST" '<=' "$GOAL")); p99 fedgate/trivial **${RATIO_P99}x**."
    if [ "$TOTAL_ERR" -ne 0 ]; then
        echo
        echo "**Warning**: $TOTAL_ERR socket errors or non-2xx answers over the runs (see the errors column)."
    fi
    echo
    echo "### Per round"
    echo
    echo "| round | target | req/s | p50 ms | p99 ms | errors | trivial/fedgate req/s |"
    echo "|---:|---|---:|---:|---:|---:|---:|"
    for ((r = 1; r <= ROUNDS; r++)); do
        for t in "${NAMES[@]}"; do
            rr=''
            [ "$t" = fedgate ] && rr="$(bench_ratio "${RPS[$r,trivial]}" "${RPS[$r,fedgate]}")x"
            printf '| %d | %s | %.0f | %.2f | %.2f | %d | %s |\n' "$r" "$t" \
                "${RPS[$r,$t]}" "${P50[$r,$t]}" "${P99[$r,$t]}" "${ERR[$r,$t]}" "$rr"
        done
    done
    echo
    echo "### CPU used during each measured run"
    echo
    echo "User+system CPU seconds per process over each ${BENCH_WRK_DURATION} run, with $(nproc) cores"
    echo "shared by all, and CPU microseconds per request of the front nginx and of each"
    echo "auth endpoint."
    echo
    echo "| round | target | wrk s | upstream nginx s | front nginx s | trivial nginx s | fedgate s | front µs/req | trivial µs/req | fedgate µs/req |"
    echo "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    for ((r = 1; r <= ROUNDS; r++)); do
        for t in "${NAMES[@]}"; do
            echo "| $r | $t | ${CPU[$r,$t]} |"
        done
    done
    echo
    echo "### Machine"
    echo
    bench_machine_facts
    echo "- load average (1/5/15 min) before the runs: $LOAD_BEFORE; after: $(bench_loadavg)"
    echo "- fedgate: $(bench_git_rev), release profile"
} >"$SECTION_FILE"

bench_replace_section "$RESULTS" forward "$SECTION_FILE"
cat "$SECTION_FILE"
bench_log "results written to bench/RESULTS.md (section forward) and bench/results/forward.md"
