#!/bin/sh
# The nightly reconcile as a long-running container (docker compose has no cron): sleeps until
# MSGTRACE_RECONCILE_AT (HH:MM in MSGTRACE_TZ, default 00:30 UTC), runs
# `msgtrace reconcile --yesterday`, keeps the report and the JSON under /var/lib/msgtrace/reports,
# then sleeps again. Exit status of a run: 0 nothing lost, 1 messages lost (the alert), 2 error.
# The status file says when the last run ended and how; the healthcheck reads it.
set -u
at="${MSGTRACE_RECONCILE_AT:-00:30}"
tz="${MSGTRACE_TZ:-UTC}"
dir="${MSGTRACE_REPORT_DIR:-/var/lib/msgtrace/reports}"
status="$dir/.last-run"
mkdir -p "$dir"
case "$at" in
  [0-2][0-9]:[0-5][0-9]) ;;
  *) echo "msgtrace-nightly: MSGTRACE_RECONCILE_AT must be HH:MM, not '$at'" >&2; exit 2 ;;
esac
[ -f "$status" ] || echo "waiting for the first run at $at $tz" > "$status"

run_once() {
  day=$(TZ="$tz" date -d yesterday +%F)
  echo "msgtrace-nightly: reconciling $day ($tz)"
  msgtrace reconcile --yesterday --tz "$tz" --out "$dir/reconcile-$day.html" --json "$@" > "$dir/reconcile-$day.json"
  rc=$?
  echo "$(date -u +%FT%TZ) exit=$rc day=$day" > "$status"
  case $rc in
    0) echo "msgtrace-nightly: $day: nothing lost" ;;
    1) echo "msgtrace-nightly: $day: MESSAGES LOST, see $dir/reconcile-$day.html" >&2 ;;
    *) echo "msgtrace-nightly: $day: reconcile failed (exit $rc)" >&2 ;;
  esac
  return $rc
}

if [ "${1:-}" = "--now" ]; then
  shift
  run_once "$@"
  exit $?
fi
while :; do
  now=$(date +%s)
  next=$(TZ="$tz" date -d "today $at" +%s)
  [ "$next" -gt "$now" ] || next=$(TZ="$tz" date -d "tomorrow $at" +%s)
  echo "msgtrace-nightly: next run at $(TZ="$tz" date -d "@$next" '+%F %H:%M %Z')"
  sleep $((next - now))
  run_once "$@"
done
