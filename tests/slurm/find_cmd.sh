# Sourced by start_cluster.sh and stop_cluster.sh.
# find_cmd CMD -> pids whose command line (args joined by spaces) is CMD or
# starts with "CMD " (plain string match, no regex, no fork per process)
find_cmd() {
    local f a
    for f in /proc/[0-9]*/cmdline; do
        { mapfile -d '' -t a < "$f"; } 2>/dev/null || continue
        [[ "${a[*]:-}" == "$1" || "${a[*]:-}" == "$1 "* ]] && { f=${f#/proc/}; echo "${f%%/*}"; }
    done
    return 0
}
