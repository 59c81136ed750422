#!/bin/sh
# Runs one fuzz target (built by `cargo fuzz build --sanitizer none
# --codegen-units 16`, see docs/reliability.md) at the lowest priority for
# SECONDS (default 1800), recording wall and CPU time with /usr/bin/time -v.
# New inputs go to fuzz/work/TARGET, problems to fuzz/artifacts/TARGET/,
# the log to fuzz/work/TARGET.log. Run from the repository root.
set -eu
target=$1
seconds=${2:-1800}
bin=${CARGO_TARGET_DIR:-target}/x86_64-unknown-linux-gnu/release/$target
# With autogroup scheduling (Linux's default for desktops and many
# servers), `nice` only ranks processes within one session's group; lower
# the whole group too, so the fuzzer yields to other sessions' builds.
# Start this script with setsid so the group is the fuzzer's alone.
if [ -w /proc/self/autogroup ]; then echo 19 > /proc/self/autogroup || true; fi
mkdir -p "fuzz/work/$target" "fuzz/artifacts/$target"
exec nice -n 19 /usr/bin/time -v "$bin" \
    -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 \
    -fork=1 -ignore_crashes=1 -ignore_timeouts=1 -ignore_ooms=1 \
    -print_final_stats=1 \
    -artifact_prefix="fuzz/artifacts/$target/" \
    "fuzz/work/$target" "fuzz/corpus/$target" \
    > "fuzz/work/$target.log" 2>&1
