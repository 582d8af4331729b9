# Shared by the bench scripts: source it.

# settle: flush dirty pages and wait for writeback to drain, so a timed step
# does not pay for the previous step's writes (otherwise whichever tool runs
# first after a large write is up to 1.5x slower).
settle() {
    sync
    local i kb
    for i in $(seq 300); do
        kb=$(awk '/^(Dirty|Writeback):/ { s += $2 } END { print s + 0 }' /proc/meminfo)
        ((kb < 16384)) && break
        sleep 0.2
    done
    sleep 1
}
