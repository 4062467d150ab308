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

# start NAME: runs /NAME with its stdin and stdout on fifos (fixture
# NAME's are fds $IN_NAME and $OUT_NAME here), waits for "ready".
# Reading a fifo blocks until the line is there: no polling, so the timed
# batches are timed to the line, and no poll loop competes with them.
start() {
	mkfifo /tmp/$1.in /tmp/$1.out
	/$1 </tmp/$1.in >/tmp/$1.out 2>&1 &
	eval "PID_$1=\$!"
	# Each open blocks until the fixture has opened the other end.
	case $1 in
	spawner) exec 3>/tmp/$1.in 5</tmp/$1.out; IN_spawner=3; OUT_spawner=5 ;;
	vmleak) exec 4>/tmp/$1.in 6</tmp/$1.out; IN_vmleak=4; OUT_vmleak=6 ;;
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

# ask NAME CMD PREFIX: sends CMD to fixture NAME, expects PREFIX back.
ask() {
	eval "echo \"$2\" >&\$IN_$1"
	expect "$1" "$3"
}

# metric NAME PID: the sample of NAME for PID (0 when absent).
metric() {
	v=$(grep "^$1{.*pid=\"$2\"" /tmp/metrics | head -n 1 | awk '{print $NF}')
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

say "boot kernel=$(uname -r) machine=$(uname -m) cpus=$(grep -c ^processor /proc/cpuinfo)"
start spawner
start vmleak

# The bare cost first, before anything is attached: a warm-up batch, then
# a timed one.
ask spawner "spawn $BATCH 0" done
t0=$(now_ms)
ask spawner "spawn $BATCH 0" done
t1=$(now_ms)
say "timing phase=bare spawns=$BATCH ms=$((t1 - t0))"

# The budget off: emulation makes every hit dear, and a detached group
# would leave the timed batch half unprobed and the counts to the scans.
/gostray run --pid "$PID_spawner" --pid "$PID_vmleak" --pid-label \
	--listen 127.0.0.1:$PORT --leak-after 2s --scan-interval 1s \
	--overhead-budget off \
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

scrape
counts
ask spawner "spawn 0 0" done
say "counts phase=attach created=$CREATED exited=$EXITED live=$LIVE lost=$LOST reconciled=$RECONCILED waited=${i}s numgoroutine=${ANSWER#done }"
C0=$CREATED
E0=$EXITED
L0=$LIVE

ask spawner "spawn 100 50" done
settle $((C0 + 150)) $((E0 + 100)) $((L0 + 50))
say "counts phase=spawn exiting=100 blocking=50 created=$CREATED exited=$EXITED live=$LIVE lost=$LOST reconciled=$RECONCILED waited=${i}s numgoroutine=${ANSWER#done }"

ask spawner release released
settle $((C0 + 150)) $((E0 + 150)) $L0
say "counts phase=release created=$CREATED exited=$EXITED live=$LIVE lost=$LOST reconciled=$RECONCILED waited=${i}s numgoroutine=${ANSWER#released }"

t0=$(now_ms)
ask spawner "spawn $BATCH 0" done
t1=$(now_ms)
say "timing phase=probed spawns=$BATCH ms=$((t1 - t0))"
settle $((C0 + 150 + BATCH)) $((E0 + 150 + BATCH)) $L0
say "counts phase=batch exiting=$BATCH blocking=0 created=$CREATED exited=$EXITED live=$LIVE lost=$LOST reconciled=$RECONCILED waited=${i}s numgoroutine=${ANSWER#done }"

ask vmleak leak "ok leak"
i=0
while :; do
	get /api/v1/leaks /tmp/leaks
	grep -q '"verdict": *"leak"' /tmp/leaks && break
	i=$((i + 1))
	[ $i -gt 60 ] && break
	sleep 1
done
say "leaks after ${i}s pid=$PID_vmleak"
echo "gostray-vm: report $(sed '1,/^\r*$/d' /tmp/leaks | tr -d '\r\n')"

kill $AGENT
grep -E 'WARN|ERROR' /tmp/agent.log | sed 's/^/gostray-vm: agent-log: /' | tail -n 20
finish
