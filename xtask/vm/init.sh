#!/bin/busybox sh
# /init of the arm64 VM test (`cargo xtask arm64-vm`): runs as PID 1 in an
# initramfs under qemu-system-aarch64. It drives the arm64 fixtures, scrapes
# the agent attached to them and prints what it saw as `gostray-vm: ...`
# lines on the console; the host (xtask/src/vm/) judges them. It judges
# nothing itself, only waits (bounded) for the agent to catch up.
/bin/busybox --install -s /bin
export PATH=/bin

mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
mount -t tmpfs tmp /tmp
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
mount -t bpf bpf /sys/fs/bpf 2>/dev/null
ip link set lo up

# Spawns per timed batch: one create and one exit probe hit each.
BATCH=${gostray_batch:-50000}
# The Go lines whose fixtures are here, comma-separated: the first is
# attached to as a running process and timed, the others are found as
# they start (the agent's exec tracepoint).
LINES=${gostray_lines:-1.27}
FIRST=${LINES%%,*}
PORT=9981

say() { echo "gostray-vm: $*"; }
finish() {
	say "end"
	sync
	poweroff -f
}

# Milliseconds since boot: busybox's date has no %N here, /proc/uptime
# has centiseconds, plenty for batches that take seconds.
now_ms() {
	local up frac
	read up _ </proc/uptime
	frac=${up#*.}
	# "07" would read as octal.
	echo $((${up%.*} * 1000 + ${frac#0} * 10))
}

# start KIND LINE: runs /KIND-LINE with its stdin and stdout on fifos
# (fixture KIND's are fds $IN_KIND and $OUT_KIND here, its PID $PID_KIND),
# waits for "ready". Reading a fifo blocks until the line is there: no
# polling, so the timed batches are timed to the line, and no poll loop
# competes with them. One line's fixtures run at a time.
start() {
	rm -f /tmp/$1-$2.in /tmp/$1-$2.out
	mkfifo /tmp/$1-$2.in /tmp/$1-$2.out
	/$1-$2 </tmp/$1-$2.in >/tmp/$1-$2.out 2>&1 &
	eval "PID_$1=\$!"
	# Each open blocks until the fixture has opened the other end.
	case $1 in
	spawner) exec 3>/tmp/$1-$2.in 5</tmp/$1-$2.out; IN_spawner=3; OUT_spawner=5 ;;
	vmleak) exec 4>/tmp/$1-$2.in 6</tmp/$1-$2.out; IN_vmleak=4; OUT_vmleak=6 ;;
	esac
	expect $1 ready
}

# expect NAME PREFIX: the next line of fixture NAME (120 s at most) must
# start with PREFIX; it is left in $ANSWER.
expect() {
	local line
	if ! eval "read -t 120 -r line <&\$OUT_$1"; then
		say "error: $1 said nothing (waiting for '$2')"
		finish
	fi
	case "$line" in
	"$2"*) ANSWER=$line ;;
	*) say "error: $1 said '$line' (waiting for '$2')"; finish ;;
	esac
}

# tell NAME CMD: sends CMD to fixture NAME.
tell() { eval "echo \"$2\" >&\$IN_$1"; }
# ask NAME CMD PREFIX: sends CMD to fixture NAME, expects PREFIX back.
ask() {
	tell "$1" "$2"
	expect "$1" "$3"
}

# metric NAME PID [MATCH]: the sample of NAME for PID (0 when absent),
# the first whose labels also contain MATCH.
metric() {
	v=$(grep "^$1{.*pid=\"$2\"" /tmp/metrics | grep -F "${3:-}" | head -n 1 | awk '{print $NF}')
	echo "${v:-0}"
}
# get PATH FILE: the agent's answer to GET PATH, headers and all. With
# nc: busybox's wget here is linked statically against glibc and crashes
# resolving any address.
get() {
	printf 'GET %s HTTP/1.0\r\nHost: vm\r\n\r\n' "$1" |
		nc -w 10 127.0.0.1 $PORT >"$2" 2>/dev/null || : >"$2"
}
scrape() { get /metrics /tmp/metrics; }
counts() {
	CREATED=$(metric gostray_goroutines_created_total "$PID_spawner")
	EXITED=$(metric gostray_goroutines_exited_total "$PID_spawner")
	LIVE=$(metric gostray_goroutines "$PID_spawner")
	LOST=$(metric gostray_events_lost_total "$PID_spawner")
	RECONCILED=$(metric gostray_goroutines_reconciled_total "$PID_spawner")
}
# settle CREATED EXITED LIVE: scrapes until the counts reach these (90 s
# at most); the host judges the last ones.
settle() {
	i=0
	while :; do
		scrape
		counts
		[ "$CREATED" = "$1" ] && [ "$EXITED" = "$2" ] && [ "$LIVE" = "$3" ] && break
		i=$((i + 1))
		[ $i -gt 90 ] && break
		sleep 1
	done
}
# watched PID: scrapes until the agent serves PID's live count (60 s at
# most): it has attached.
watched() {
	i=0
	while scrape; ! grep -q "^gostray_goroutines{.*pid=\"$1\"" /tmp/metrics; do
		i=$((i + 1))
		[ $i -gt 60 ] && say "error: pid $1 not watched after 60 s" && finish
		sleep 1
	done
}

# die CMD REASON: tells the leak fixture CMD, which kills it, waits (30 s
# at most) for it to be gone, then scrapes (30 s at most) until the agent
# counts its death with REASON; the count is left in $DIED.
die() {
	tell vmleak "$1"
	i=0
	while kill -0 $PID_vmleak 2>/dev/null && [ $i -lt 30 ]; do
		i=$((i + 1))
		sleep 1
	done
	i=0
	while :; do
		scrape
		DIED=$(metric gostray_process_deaths_total "$PID_vmleak" "reason=\"$2\"")
		[ "$DIED" != 0 ] && break
		i=$((i + 1))
		[ $i -gt 30 ] && break
		sleep 1
	done
}

say "boot kernel=$(uname -r) machine=$(uname -m) cpus=$(grep -c ^processor /proc/cpuinfo) lines=$LINES"
start spawner $FIRST
start vmleak $FIRST

# The bare cost first, before anything is attached: a warm-up batch, then
# a timed one.
ask spawner "spawn $BATCH 0" done
t0=$(now_ms)
ask spawner "spawn $BATCH 0" done
t1=$(now_ms)
say "timing phase=bare spawns=$BATCH ms=$((t1 - t0))"

# Every Go fixture, running now or started later, as a DaemonSet agent
# watches a node. The budget off: emulation makes every hit dear, and a
# detached group would leave the timed batch half unprobed and the counts
# to the scans.
# The heap walk's debug line says how many parked stacks were read through
# their stack maps (the arm64 frame layout) and how many conservatively.
/gostray run --include 'spawner-*' --include 'vmleak-*' --pid-label \
	--listen 127.0.0.1:$PORT --leak-after 2s --scan-interval 1s \
	--overhead-budget off --log 'info,gostray::proc::heapwalk=debug' \
	>/tmp/agent.log 2>&1 &
AGENT=$!
i=0
while get /readyz /tmp/ready; ! head -n 1 /tmp/ready | grep -q ' 200'; do
	i=$((i + 1))
	if [ $i -gt 180 ] || ! kill -0 $AGENT 2>/dev/null; then
		say "error: agent not ready"
		sed 's/^/gostray-vm: agent-log: /' /tmp/agent.log | tail -n 40
		finish
	fi
	sleep 1
done
say "agent ready after ${i}s"
# The agent prices a hit of each program at start (kernel/calibrate.rs).
say "calibration $(grep -m 1 'probe cost' /tmp/agent.log | sed 's/.*kernel *//')"

for L in $(echo "$LINES" | tr , ' '); do
	[ "$L" = "$FIRST" ] || { start spawner $L; start vmleak $L; }
	watched $PID_spawner
	watched $PID_vmleak
	counts
	ask spawner "spawn 0 0" done
	say "counts line=$L phase=attach created=$CREATED exited=$EXITED live=$LIVE lost=$LOST reconciled=$RECONCILED waited=${i}s numgoroutine=${ANSWER#done }"
	C0=$CREATED
	E0=$EXITED
	L0=$LIVE

	ask spawner "spawn 100 50" done
	settle $((C0 + 150)) $((E0 + 100)) $((L0 + 50))
	say "counts line=$L phase=spawn exiting=100 blocking=50 created=$CREATED exited=$EXITED live=$LIVE lost=$LOST reconciled=$RECONCILED waited=${i}s numgoroutine=${ANSWER#done }"

	ask spawner release released
	settle $((C0 + 150)) $((E0 + 150)) $L0
	say "counts line=$L phase=release created=$CREATED exited=$EXITED live=$LIVE lost=$LOST reconciled=$RECONCILED waited=${i}s numgoroutine=${ANSWER#released }"

	if [ "$L" = "$FIRST" ]; then
		t0=$(now_ms)
		ask spawner "spawn $BATCH 0" done
		t1=$(now_ms)
		say "timing phase=probed spawns=$BATCH ms=$((t1 - t0))"
		settle $((C0 + 150 + BATCH)) $((E0 + 150 + BATCH)) $L0
		say "counts line=$L phase=batch exiting=$BATCH blocking=0 created=$CREATED exited=$EXITED live=$LIVE lost=$LOST reconciled=$RECONCILED waited=${i}s numgoroutine=${ANSWER#done }"
	fi
	tell spawner quit

	ask vmleak hold "ok hold"
	ask vmleak leak "ok leak"
	i=0
	while :; do
		get /api/v1/leaks /tmp/leaks
		grep -q '"verdict": *"leak"' /tmp/leaks && break
		i=$((i + 1))
		[ $i -gt 60 ] && break
		sleep 1
	done
	say "leaks line=$L after ${i}s pid=$PID_vmleak"
	echo "gostray-vm: report line=$L $(sed '1,/^\r*$/d' /tmp/leaks | tr -d '\r\n')"
	W=$(grep 'parked stacks read through stack maps' /tmp/agent.log | grep -E "pid=$PID_vmleak( |\$)" | tail -n 1)
	P=$(echo "$W" | sed -n 's/.*precise=\([0-9]*\).*/\1/p')
	F=$(echo "$W" | sed -n 's/.*fallback=\([0-9]*\).*/\1/p')
	say "stacks line=$L precise=${P:-0} fallback=${F:-0}"

	# A double close and a send on a closed channel, both recovered.
	ask vmleak misuse "ok misuse"
	i=0
	while :; do
		scrape
		D=$(metric gostray_channel_double_closes_total "$PID_vmleak")
		S=$(metric gostray_channel_sends_on_closed_total "$PID_vmleak")
		[ "$D" != 0 ] && [ "$S" != 0 ] && break
		i=$((i + 1))
		[ $i -gt 30 ] && break
		sleep 1
	done
	say "misuse line=$L double_closes=$D sends_on_closed=$S waited=${i}s"

	# The runtime's fatal error: the fixture dies.
	die unlock unlock_of_unlocked
	say "death line=$L reason=unlock_of_unlocked count=$DIED waited=${i}s"

	# A fresh leak fixture, and an unrecovered panic: the fatal panic
	# probe, whose message the agent must have read.
	exec 4>&- 6<&-
	start vmleak $L
	watched $PID_vmleak
	die panic panic
	get /api/v1/leaks /tmp/leaks
	MSG=$(grep -c 'vmleak: the worker pool is gone' /tmp/leaks)
	say "panic line=$L reason=panic count=$DIED message_found=$MSG waited=${i}s"
	exec 3>&- 4>&- 5<&- 6<&-
done

kill $AGENT
grep -E 'WARN|ERROR' /tmp/agent.log | sed 's/^/gostray-vm: agent-log: /' | tail -n 20
finish
