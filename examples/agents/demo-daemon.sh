#!/bin/sh
# A stand-in service for the examples and the demo: starts a detached `sleep` and writes its pid
# to the file named by $1 (what a real daemon's init script does).
set -eu
pidfile=$1
setsid sleep 100000 </dev/null >/dev/null 2>&1 &
echo $! > "$pidfile"
