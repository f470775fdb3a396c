#!/bin/sh
# Runs `kmem-trace serve` with one capability set per case (setpriv: the
# bounding set is what a uid-0 process keeps across exec, as in a container)
# and prints what each set gets: started or refused (and how), /readyz, the
# census (kmem_trace_dying_memcgs) and whether the history was written.
# Usage (root, holding the kernel lock):
#   flock /tmp/kmem-trace-kernel.lock deploy/hack/least-privilege.sh BINARY [CASE...]
# A case is NAME=cap,cap,... ; without cases the default table below runs.
# NAME ending in "+fake" hides the missing CAP_SYS_ADMIN from kmem-trace's own
# up-front check (a private mount namespace binds a /proc/PID/status that
# claims every capability) so the kernel's answer is seen instead.
set -u
BIN=$(readlink -f "$1"); shift
OUT=${KMEM_LP_OUT:-/tmp/kmem-lp-$$}
mkdir -p "$OUT"
trap 'rm -rf "$OUT"' EXIT
if [ $# -eq 0 ]; then
  set -- \
    all=bpf,perfmon,sys_admin,sys_resource,dac_read_search,dac_override,sys_ptrace,syslog \
    admin-bpf-perfmon=sys_admin,bpf,perfmon \
    admin=sys_admin \
    bpf-perfmon=bpf,perfmon \
    bpf-perfmon+fake=bpf,perfmon \
    bpf-perfmon-dac+fake=bpf,perfmon,dac_read_search \
    admin-bpf=sys_admin,bpf \
    admin-perfmon=sys_admin,perfmon \
    none=
fi
port=19460
for case in "$@"; do
  name=${case%%=*}; caps=${case#*=}
  dir=$OUT/$name; mkdir -p "$dir"; port=$((port + 1))
  bset="-all"; for c in $(echo "$caps" | tr , ' '); do bset="$bset,+$c"; done
  cmd="setpriv --inh-caps=-all --bounding-set=$bset -- $BIN serve --listen 127.0.0.1:$port --db $dir/history.db --zombie-after 1s"
  case $name in
    *+fake)
      unshare -m sh -c "sed 's/^CapEff:.*/CapEff:\t000001ffffffffff/' /proc/\$\$/status > $dir/status &&
        mount --bind $dir/status /proc/\$\$/status && exec $cmd" > "$dir/out" 2> "$dir/err" & ;;
    *) $cmd > "$dir/out" 2> "$dir/err" & ;;
  esac
  pid=$!
  sleep "${KMEM_LP_WAIT:-8}"
  ready=$(curl -s -m 3 "http://127.0.0.1:$port/readyz" | head -1)
  dying=$(curl -s -m 3 "http://127.0.0.1:$port/metrics" | grep '^kmem_trace_dying_memcgs ' | cut -d' ' -f2)
  caps_eff=$(grep CapEff /proc/$pid/status 2>/dev/null | cut -f2)
  kill -TERM $pid 2>/dev/null; wait $pid; rc=$?
  hist=no; [ -s "$dir/history.db" ] && hist="yes ($(stat -c %s "$dir/history.db") bytes)"
  echo "== $name [$caps] CapEff=${caps_eff:-gone} exit=$rc"
  echo "   readyz: ${ready:-no answer}; dying memcgs (census): ${dying:-none}; history written: $hist"
  grep -v '^$' "$dir/err" | grep -iv 'metrics on' | head -6 | sed 's/^/   | /'
done
