#!/usr/bin/env bash
# Stop what tests/slurm/start.sh started (by its pid files) and remove the config it wrote.
STATE=${SEDM_SLURM_STATE:-/var/lib/sedm-slurm}
MARK="# written by sedm tests/slurm/start.sh"
for name in slurmd slurmctld munged; do
    f="$STATE/$name.pid"
    [ -s "$f" ] || continue
    pid=$(cat "$f")
    if kill "$pid" 2>/dev/null; then
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        echo "stopped $name (pid $pid)"
    fi
    rm -f "$f"
done
for f in /etc/slurm/slurm.conf /etc/slurm/gres.conf; do
    [ -f "$f" ] && grep -qxF "$MARK" "$f" && rm -f "$f"
done
exit 0
