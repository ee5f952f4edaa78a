#!/usr/bin/env bash
# Proxy core benchmark: the cost of fedgate's proxying path, with no
# authentication, against nginx proxy_pass in its tuned form.
#
# One nginx answers `200 ok` and is the upstream of both proxies. wrk runs
# against (a) that upstream directly, (b) a second nginx doing proxy_pass with
# upstream keep-alive, (c) fedgate with a realm-less route. Everything runs on
# 127.0.0.1 in one script, alternating targets within each round, because
# runs on a shared 2-core machine swing by tens of percent and only
# same-run ratios are meaningful.
#
# Usage: bench/proxy.sh   (or scripts/bench proxy)
# Environment: ROUNDS (default 3), CARGO_TARGET_DIR, BENCH_KEEP=1 keeps the
# work dir with configs and logs for inspection.
set -euo pipefail

BENCH_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib.sh
. "$BENCH_ROOT/bench/lib.sh"

bench_rounds

RESULTS=$BENCH_ROOT/bench/RESULTS.md
SECTION_FILE=$BENCH_ROOT/bench/results/proxy.md
REPRO='scripts/bench proxy'

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
bench_free_port NGX_PORT
bench_free_port FG_PORT

# --- (a) upstream: nginx answering from memory --------------------------------
bench_upstream_start "$UP_PORT"
UP_PID=$BENCH_LAST_PID

# --- (b) nginx proxy_pass, tuned as a production install would be ------------
# Without the upstream block's keepalive, proxy_http_version 1.1 and the
# emptied Connection header, nginx opens a new upstream connection per request
# and runs at a third of this speed; comparing against that would flatter
# fedgate.
bench_nginx_conf proxy "
    # Logged like a normal install, buffered; fedgate logs every request too.
    access_log $W/proxy-access.log combined buffer=64k flush=1s;

    upstream bench_upstream {
        server 127.0.0.1:$UP_PORT;
        keepalive 64;
    }

    server {
        listen 127.0.0.1:$NGX_PORT;
        location / {
            proxy_pass http://bench_upstream;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
        }
    }"
bench_nginx_start proxy
NGX_PID=$BENCH_LAST_PID

# --- (c) fedgate --------------------------------------------------------------
cat >"$W/fedgate.toml" <<EOF
[server]
listen = []
listen_plain = ["127.0.0.1:$FG_PORT"]
tls_cert = "$W/cert.pem"
tls_key = "$W/key.pem"
max_connections = 10000

[[route]]
path = "/"
upstream = "http://127.0.0.1:$UP_PORT"
realm = "none"
EOF

bench_wait_http upstream "http://127.0.0.1:$UP_PORT/" "$UP_PID" 100 ok ||
    bench_die "upstream nginx did not start"
bench_wait_http "nginx proxy" "http://127.0.0.1:$NGX_PORT/" "$NGX_PID" 100 ok ||
    bench_die "nginx proxy did not start"

# Global options may be accepted only before the subcommand or only after it,
# depending on how the CLI declares them; try both orders.
FG_PID=
for order in pre post; do
    if [ "$order" = pre ]; then
        fg_args=(--log-format json serve --config "$W/fedgate.toml")
    else
        fg_args=(serve --config "$W/fedgate.toml" --log-format json)
    fi
    bench_log "starting fedgate ${fg_args[*]}"
    bench_spawn "$W/fedgate.log" "$FEDGATE" "${fg_args[@]}"
    FG_PID=$BENCH_LAST_PID
    # Generous: the first start may generate the self-signed certificate.
    if bench_wait_http fedgate "http://127.0.0.1:$FG_PORT/" "$FG_PID" 300 ok; then
        break
    fi
    if bench_alive "$FG_PID" || [ "$order" = post ]; then
        bench_die "fedgate did not start (log: see below)"
    fi
done

# --- measurement --------------------------------------------------------------
NAMES=(upstream nginx fedgate)
declare -A LABEL=(
    [upstream]="upstream direct (nginx \`return 200\`)"
    [nginx]="nginx \`proxy_pass\`, upstream keep-alive"
    [fedgate]="fedgate, \`realm = \"none\"\`"
)
declare -A URL=(
    [upstream]="http://127.0.0.1:$UP_PORT/"
    [nginx]="http://127.0.0.1:$NGX_PORT/"
    [fedgate]="http://127.0.0.1:$FG_PORT/"
)
declare -A PID_OF=([upstream]=$UP_PID [nginx]=$NGX_PID [fedgate]=$FG_PID)
declare -A RPS P50 P99 ERR CPU
CLK=$(bench_clk_tck)
# Other load on the machine moves every figure; record it next to them.
LOAD_BEFORE=$(bench_loadavg)

for ((r = 1; r <= ROUNDS; r++)); do
    # Rotate the order each round so no target always runs first or last
    # (thermal state, page cache, neighbours' load drift over a run).
    for ((k = 0; k < ${#NAMES[@]}; k++)); do
        t=${NAMES[(k + r - 1) % ${#NAMES[@]}]}
        out=$W/wrk-$r-$t.txt
        bench_log "round $r/$ROUNDS: $t (${URL[$t]})"
        bench_wrk_warmup "${URL[$t]}"
        mapfile -t before < <(bench_cpu_ticks "$UP_PID" "$NGX_PID" "$FG_PID")
        bench_wrk "${URL[$t]}" "$out"
        mapfile -t after < <(bench_cpu_ticks "$UP_PID" "$NGX_PID" "$FG_PID")
        for n in "${NAMES[@]}"; do
            bench_alive "${PID_OF[$n]}" || bench_die "$n (pid ${PID_OF[$n]}) died during the run against $t"
        done
        read -r rps p50 p99 err < <(bench_wrk_parse "$out") ||
            bench_die "could not parse wrk output for $t: $(cat "$out")"
        RPS[$r,$t]=$rps P50[$r,$t]=$p50 P99[$r,$t]=$p99 ERR[$r,$t]=$err
        read -r wu ws <"$out.cpu"
        CPU[$r,$t]=$(awk -v wu="$wu" -v ws="$ws" -v clk="$CLK" \
            -v a0="${before[0]}" -v a1="${after[0]}" \
            -v b0="${before[1]}" -v b1="${after[1]}" \
            -v c0="${before[2]}" -v c1="${after[2]}" \
            'BEGIN { printf "%.1f | %.1f | %.1f | %.1f", wu + ws, (a1 - a0) / clk, (b1 - b0) / clk, (c1 - c0) / clk }')
        bench_log "  $t: $rps req/s, p50 $p50 ms, p99 $p99 ms, errors $err"
        [ "$err" -eq 0 ] || bench_log "  WARNING: $t had $err socket errors or non-2xx answers"
    done
done

# --- report -------------------------------------------------------------------
declare -A MED_RPS MED_P50 MED_P99
bench_medians "${NAMES[@]}"
RATIO_RPS=$(bench_ratio "${MED_RPS[fedgate]}" "${MED_RPS[nginx]}")
RATIO_P99=$(bench_ratio "${MED_P99[fedgate]}" "${MED_P99[nginx]}")
TOTAL_ERR=0
for k in "${!ERR[@]}"; do TOTAL_ERR=$((TOTAL_ERR + ERR[$k])); done

mkdir -p "$(dirname "$SECTION_FILE")"
{
    echo "## Proxy core: upstream vs nginx proxy_pass vs fedgate"
    echo
    workers=${BENCH_NGINX_WORKERS:-2}
    cat <<EOF
Reproduce with \`$REPRO\` (\`ROUNDS=$ROUNDS\`; the release build is part of it).
Each measured run: \`$(bench_wrk_cmd) URL\`, after a $BENCH_WARMUP warm-up;
keep-alive, all on 127.0.0.1, wrk sharing the cores with the servers.
The upstream is one nginx (\`return 200 "ok\\n"\`, $workers workers) shared by
all targets; the nginx proxy has $workers workers, \`upstream { keepalive 64; }\`,
\`proxy_http_version 1.1\`, \`proxy_set_header Connection ""\` and a buffered
access log; fedgate serves a plain listener with one \`realm = "none"\` route
and writes JSON logs to a file. Targets run in rotating order within each
round; the summary shows medians over the rounds.
EOF
    echo
    echo "| target | req/s | p50 ms | p99 ms |"
    echo "|---|---:|---:|---:|"
    for t in "${NAMES[@]}"; do
        printf '| %s | %.0f | %.2f | %.2f |\n' "${LABEL[$t]}" "${MED_RPS[$t]}" "${MED_P50[$t]}" "${MED_P99[$t]}"
    done
    echo
    echo "**fedgate / nginx**: req/s **${RATIO_RPS}x** (target >= 0.90: $(bench_verdict "$RATIO_RPS" '>=' 0.90)),"
    echo "p99 **${RATIO_P99}x** (target <= 1.50: $(bench_verdict "$RATIO_P99" '<=' 1.50))."
    if [ "$TOTAL_ERR" -ne 0 ]; then
        echo
        echo "**Warning**: $TOTAL_ERR socket errors or non-2xx answers over the runs (see the errors column)."
    fi
    echo
    echo "### Per round"
    echo
    echo "| round | target | req/s | p50 ms | p99 ms | errors | fedgate/nginx req/s | fedgate/nginx p99 |"
    echo "|---:|---|---:|---:|---:|---:|---:|---:|"
    for ((r = 1; r <= ROUNDS; r++)); do
        for t in "${NAMES[@]}"; do
            rr='' rp=''
            if [ "$t" = fedgate ]; then
                rr="$(bench_ratio "${RPS[$r,fedgate]}" "${RPS[$r,nginx]}")x"
                rp="$(bench_ratio "${P99[$r,fedgate]}" "${P99[$r,nginx]}")x"
            fi
            printf '| %d | %s | %.0f | %.2f | %.2f | %d | %s | %s |\n' "$r" "$t" \
                "${RPS[$r,$t]}" "${P50[$r,$t]}" "${P99[$r,$t]}" "${ERR[$r,$t]}" "$rr" "$rp"
        done
    done
    echo
    echo "### CPU seconds used during each measured run"
    echo
    echo "User+system CPU seconds per process over each ${BENCH_WRK_DURATION} run, with $(nproc) cores"
    echo "shared by all: how the machine was split between the load generator, the"
    echo "upstream and the proxy under test."
    echo
    echo "| round | target | wrk | upstream nginx | nginx proxy | fedgate |"
    echo "|---:|---|---:|---:|---:|---:|"
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

bench_replace_section "$RESULTS" proxy "$SECTION_FILE"
cat "$SECTION_FILE"
bench_log "results written to bench/RESULTS.md (section proxy) and bench/results/proxy.md"
