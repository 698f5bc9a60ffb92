#!/usr/bin/env bash
# Install TaskDash's systemd units, idempotently: run it again (after an upgrade, with other
# options) and it changes only what differs, never an existing config or env file.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: sudo scripts/install-systemd.sh [options]

Creates the system user "taskdash" (systemd-sysusers), /etc/taskdash with a starting config and
an empty env file for secrets, and installs config/taskdash.service (and, with --periodic,
config/taskdash-periodic.service) with your paths. Safe to run again: an existing config or env
file is never touched; a unit is rewritten only when it differs.

Options:
  --venv DIR      the virtualenv holding TaskDash (default /opt/taskdash/.venv)
  --config FILE   the config file the units pass to --config (default /etc/taskdash/taskdash.toml)
  --periodic      also install taskdash-periodic.service
  --only-periodic install taskdash-periodic.service only (a periodic-only machine)
  --enable        enable the units (and start them, on a running systemd)
  --root DIR      install into DIR instead of / (packaging, tests): no daemon-reload, no start
  --dry-run       say what would change, change nothing
  -h, --help      this text

Exit status: 0 done (each line says "changed" or "ok"), 2 bad usage, 1 a step failed.
EOF
}

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
root=/
venv=/opt/taskdash/.venv
config=/etc/taskdash/taskdash.toml
units=(taskdash)
enable=no
dry_run=no

die_usage() { echo "install-systemd: $1 (see --help)" >&2; exit 2; }

while [ $# -gt 0 ]; do
    case "$1" in
        --venv) [ $# -ge 2 ] || die_usage "--venv needs a directory"; venv=$2; shift ;;
        --config) [ $# -ge 2 ] || die_usage "--config needs a file"; config=$2; shift ;;
        --root) [ $# -ge 2 ] || die_usage "--root needs a directory"; root=$2; shift ;;
        --periodic) units=(taskdash taskdash-periodic) ;;
        --only-periodic) units=(taskdash-periodic) ;;
        --enable) enable=yes ;;
        --dry-run) dry_run=yes ;;
        -h|--help) usage; exit 0 ;;
        *) die_usage "unknown option $1" ;;
    esac
    shift
done

case "$venv$config" in
    *[[:space:]\|\&\;]*) die_usage "paths with spaces or | & ; are not supported" ;;
esac
case "$venv" in /*) ;; *) die_usage "--venv must be an absolute path" ;; esac
case "$config" in /*) ;; *) die_usage "--config must be an absolute path" ;; esac
[ -d "$root" ] || die_usage "--root $root is not a directory"
root=$(cd "$root" && pwd)
prefix=$root
[ "$root" != / ] || prefix=
[ "$(id -u)" = 0 ] || [ "$dry_run" = yes ] || { echo "install-systemd: run as root" >&2; exit 1; }

changes=0
changed() { echo "changed: $1"; changes=$((changes + 1)); }
ok() { echo "ok: $1"; }
run() { [ "$dry_run" = yes ] || "$@"; }

# The group's number as the target system knows it (with --root, not this machine's).
taskdash_gid() { awk -F: '$1 == "taskdash" { print $3 }' "$prefix/etc/group" 2>/dev/null || true; }

ensure_user() {
    local conf="$prefix/etc/sysusers.d/taskdash.conf"
    local line='u taskdash - "TaskDash" /var/lib/taskdash /usr/sbin/nologin'
    if [ "$(cat "$conf" 2>/dev/null)" != "$line" ]; then
        changed "$conf"
        run mkdir -p "$(dirname "$conf")"
        [ "$dry_run" = yes ] || printf '%s\n' "$line" >"$conf"
    fi
    if [ -n "$(taskdash_gid)" ] && grep -q '^taskdash:' "$prefix/etc/passwd"; then
        ok "user taskdash"
        return
    fi
    changed "user taskdash (systemd-sysusers)"
    run systemd-sysusers --root="$root" taskdash.conf
}

# install_file MODE GROUP SOURCE TARGET: copy when absent or different, then set mode/owner.
install_file() {
    local mode=$1 group=$2 source=$3 target=$4
    if cmp -s "$source" "$target"; then
        ok "$target"
    else
        changed "$target"
        run install -D -m "$mode" "$source" "$target"
    fi
    set_owner "$mode" "$group" "$target"
}

# set_owner MODE GROUP PATH: root:GROUP (root:root if GROUP is root), only if different.
set_owner() {
    local mode=$1 group=$2 path=$3 gid=0
    [ "$group" = root ] || gid=$(taskdash_gid)
    if [ ! -e "$path" ]; then return 0; fi  # only in a dry run: it was not created
    if [ "$(stat -c '%u:%g %a' "$path")" != "0:${gid:-0} ${mode#0}" ]; then
        changed "$path owner/mode"
        run chown "0:$gid" "$path"
        run chmod "$mode" "$path"
    fi
}

# keep_file MODE GROUP SOURCE TARGET: a starting copy the first time, never overwritten.
keep_file() {
    local mode=$1 group=$2 source=$3 target=$4
    if [ -e "$target" ]; then
        ok "$target (kept as is)"
        return
    fi
    changed "$target"
    run install -D -m "$mode" "$source" "$target"
    set_owner "$mode" "$group" "$target"
}

ensure_config() {
    local dir
    dir="$prefix$(dirname "$config")"
    # created for TaskDash, or someone else's (an --config in /etc, say): then left as it is
    if [ -d "$dir" ]; then
        ok "$dir (kept as is)"
    else
        changed "$dir"
        run mkdir -p "$dir"
        set_owner 0750 taskdash "$dir"
    fi
    keep_file 0640 taskdash "$here/config/taskdash.toml" "$prefix$config"
    # secrets as TASKDASH_* variables: read by systemd (root) before it drops to the user
    keep_file 0600 root /dev/null "$prefix/etc/taskdash/env"
}

# The unit as shipped, with this installation's virtualenv and config file.
render_unit() {
    sed -e "s|/opt/taskdash/.venv/bin/taskdash|$venv/bin/taskdash|" \
        -e "s|--config /etc/taskdash/taskdash.toml|--config $config|" "$here/config/$1.service"
}

units_changed=no
ensure_unit() {
    local name=$1 rendered
    rendered=$(mktemp)
    render_unit "$name" >"$rendered"
    local target="$prefix/etc/systemd/system/$name.service"
    cmp -s "$rendered" "$target" || units_changed=yes
    install_file 0644 root "$rendered" "$target"
    rm -f "$rendered"
}

systemd_running() { [ -z "$prefix" ] && [ -d /run/systemd/system ]; }

ensure_enabled() {
    local name=$1
    if systemctl --root="$root" is-enabled --quiet "$name" 2>/dev/null; then
        ok "$name enabled"
    else
        changed "$name enabled"
        run systemctl --root="$root" enable --quiet "$name"
    fi
    if systemd_running && ! systemctl is-active --quiet "$name"; then
        changed "$name started"
        run systemctl start "$name"
    fi
}

ensure_user
ensure_config
for unit in "${units[@]}"; do ensure_unit "$unit"; done
if [ "$units_changed" = yes ] && systemd_running; then
    changed "systemctl daemon-reload"
    run systemctl daemon-reload
fi
[ -x "$prefix$venv/bin/taskdash" ] || echo "note: $prefix$venv/bin/taskdash does not exist yet" \
    "(python3 -m venv $venv && $venv/bin/pip install taskdash)"
if [ "$enable" = yes ]; then
    for unit in "${units[@]}"; do ensure_enabled "$unit"; done
fi
echo "$changes change(s)$([ "$dry_run" = yes ] && echo ' to make (dry run: nothing done)')"
