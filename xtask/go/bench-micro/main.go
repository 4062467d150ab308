// bench-micro is the workload of `cargo xtask bench`: one measured loop per
// -mode, timed inside the process so that starting the agent is never part
// of a figure. It prints "ready", waits for a line on stdin, runs, prints
// "ns_per_op <float>" and exits. Mode "park" instead parks -n goroutines,
// prints "parked" and holds them until stdin closes.
package main

import (
	"bufio"
	"flag"
	"fmt"
	"os"
	"runtime"
	"sync"
	"time"
)

func main() {
	mode := flag.String("mode", "spawn", "spawn | handoff | buffered | park")
	n := flag.Int("n", 1_000_000, "operations (or goroutines to park)")
	flag.Parse()
	in := bufio.NewReader(os.Stdin)
	// Start the GC's workers now so that only the measured goroutines are created later.
	runtime.GC()
	fmt.Println("ready")
	in.ReadString('\n')
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
