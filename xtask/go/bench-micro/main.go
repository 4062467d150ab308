// bench-micro is the workload of `cargo xtask bench`: one measured loop per
// -mode, timed inside the process so that starting the agent is never part
// of a figure. It prints "ready", waits for a line on stdin, runs, prints
// "ns_per_op <float>" and exits. Mode "park" instead parks -n goroutines,
// prints "parked" and holds them until stdin closes.
//
// With -window, spawn, handoff and buffered run continuously instead of -n
// times: for -warmup (while an agent's overhead budget acts), then prints
// "window" and runs for -window more, and prints "ns_per_op <float>
// cpu_ns_per_op <float>" for the window alone, the CPU being the
// process's utime + stime from /proc/self/stat.
package main

import (
	"bufio"
	"flag"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"
)

func main() {
	mode := flag.String("mode", "spawn", "spawn | handoff | buffered | park")
	n := flag.Int("n", 1_000_000, "operations (or goroutines to park)")
	warmup := flag.Duration("warmup", 0, "with -window: how long to run before the window")
	window := flag.Duration("window", 0, "run continuously and measure this long after -warmup")
	flag.Parse()
	in := bufio.NewReader(os.Stdin)
	// Start the GC's workers now so that only the measured goroutines are created later.
	runtime.GC()
	fmt.Println("ready")
	in.ReadString('\n')
	if *window > 0 {
		var op func(int)
		switch *mode {
		case "spawn":
			op = func(n int) { spawn(n) }
		case "handoff":
			op = handoffTo(make(chan int))
		case "buffered":
			op = func(n int) { buffered(n) }
		default:
			fmt.Fprintln(os.Stderr, "mode", *mode, "does not run continuously")
			os.Exit(2)
		}
		continuous(op, *warmup, *window)
		return
	}
	var elapsed time.Duration
	switch *mode {
	case "spawn":
		elapsed = spawn(*n)
	case "handoff":
		elapsed = handoff(*n)
	case "buffered":
		elapsed = buffered(*n)
	case "park":
		park(*n, in)
		return
	default:
		fmt.Fprintln(os.Stderr, "unknown mode", *mode)
		os.Exit(2)
	}
	fmt.Printf("ns_per_op %.2f\n", float64(elapsed.Nanoseconds())/float64(*n))
}

// continuous runs op in batches for warmup, then for window, and prints
// the window's wall and CPU time per operation.
func continuous(op func(int), warmup, window time.Duration) {
	// A batch takes well under a millisecond: the window ends on time.
	const batch = 1000
	for begun := time.Now(); time.Since(begun) < warmup; {
		op(batch)
	}
	fmt.Println("window")
	cpu0 := cpuSeconds()
	begun := time.Now()
	ops := 0
	for time.Since(begun) < window {
		op(batch)
		ops += batch
	}
	elapsed := time.Since(begun)
	cpu := cpuSeconds() - cpu0
	fmt.Printf("ns_per_op %.2f cpu_ns_per_op %.2f\n",
		float64(elapsed.Nanoseconds())/float64(ops), cpu*1e9/float64(ops))
}

// handoffTo starts one receiver on ch for the whole run and returns a
// batch of n blocking sends to it: no goroutine starts and no channel
// closes per batch, so only the parks are probed.
func handoffTo(ch chan int) func(int) {
	go func() {
		for range ch {
		}
	}()
	return func(n int) {
		for i := 0; i < n; i++ {
			ch <- i
		}
	}
}

// cpuSeconds is the process's utime + stime, as /proc/self/stat counts
// them (USER_HZ, 100 on every Linux architecture Go runs on).
func cpuSeconds() float64 {
	stat, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	// Fields after the command name, which may hold spaces: utime and
	// stime are fields 14 and 15, indices 11 and 12 after ')'.
	f := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
	utime, _ := strconv.ParseFloat(f[11], 64)
	stime, _ := strconv.ParseFloat(f[12], 64)
	return (utime + stime) / 100
}

// spawn starts n goroutines that exit at once, and waits for all of them.
func spawn(n int) time.Duration {
	var wg sync.WaitGroup
	wg.Add(n)
	begun := time.Now()
	for i := 0; i < n; i++ {
		go wg.Done()
	}
	wg.Wait()
	return time.Since(begun)
}

// handoff passes n values over an unbuffered channel: every send or
// receive parks one side.
func handoff(n int) time.Duration {
	ch := make(chan int)
	done := make(chan struct{})
	begun := time.Now()
	go func() {
		for range ch {
		}
		close(done)
	}()
	for i := 0; i < n; i++ {
		ch <- i
	}
	close(ch)
	<-done
	return time.Since(begun)
}

// buffered sends n values into a channel drained in batches by the same
// goroutine, so no send ever finds it full: the fast path only.
func buffered(n int) time.Duration {
	const size = 1024
	ch := make(chan int, size)
	begun := time.Now()
	for i := 0; i < n; i++ {
		if len(ch) == size {
			for j := 0; j < size; j++ {
				<-ch
			}
		}
		ch <- i
	}
	return time.Since(begun)
}

// park leaves n goroutines blocked on one channel until stdin closes.
func park(n int, in *bufio.Reader) {
	ch := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(n)
	for i := 0; i < n; i++ {
		go func() {
			wg.Done()
			<-ch
		}()
	}
	wg.Wait()
	fmt.Println("parked")
	in.ReadString('\n')
	close(ch)
}
