// bench-phases is the quiet → hot → quiet service of `cargo xtask bench`'s
// overhead-budget timeline. Quiet, it starts -quiet-rate goroutines a
// second, each doing -work of CPU (a request's worth); hot, it starts
// goroutines that exit at once as fast as it can. It prints "ready", waits
// for a line on stdin, runs -phases, printing every second "tick <seconds>
// <phase> <goroutines started that second>", then prints "done" and exits.
package main

import (
	"bufio"
	"crypto/sha256"
	"flag"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// phase is one stretch of the run: its kind ("quiet" or "hot") and length.
type phase struct {
	kind string
	long time.Duration
}

func main() {
	spec := flag.String("phases", "quiet:10s,hot:20s,quiet:60s", "kind:duration,…")
	rate := flag.Int("quiet-rate", 10, "goroutines started per second while quiet")
	work := flag.Duration("work", time.Millisecond, "CPU each quiet goroutine spends")
	flag.Parse()
	phases, err := parse(*spec)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	fmt.Println("ready")
	bufio.NewReader(os.Stdin).ReadString('\n')

	var started atomic.Int64
	var current atomic.Value
	current.Store(phases[0].kind)
	stop := make(chan struct{})
	ticked := make(chan struct{})
	go tick(&started, &current, stop, ticked)
	for _, p := range phases {
		current.Store(p.kind)
		until := time.Now().Add(p.long)
		if p.kind == "hot" {
			hot(until, &started)
		} else {
			quiet(until, *rate, *work, &started)
		}
	}
	close(stop)
	<-ticked
	fmt.Println("done")
}

func parse(spec string) ([]phase, error) {
	var phases []phase
	for _, part := range strings.Split(spec, ",") {
		kind, long, ok := strings.Cut(part, ":")
		d, err := time.ParseDuration(long)
		if !ok || err != nil || (kind != "quiet" && kind != "hot") {
			return nil, fmt.Errorf("bad phase %q: want quiet:10s or hot:20s", part)
		}
		phases = append(phases, phase{kind, d})
	}
	return phases, nil
}

// tick prints, once a second, the phase and how many goroutines started.
func tick(started *atomic.Int64, current *atomic.Value, stop, ticked chan struct{}) {
	defer close(ticked)
	t := time.NewTicker(time.Second)
	defer t.Stop()
	begun := time.Now()
	var last int64
	for {
		select {
		case <-stop:
			return
		case now := <-t.C:
			n := started.Load()
			fmt.Printf("tick %.0f %s %d\n", now.Sub(begun).Seconds(), current.Load(), n-last)
			last = n
		}
	}
}

// hot starts goroutines that exit at once, in batches, until `until`.
func hot(until time.Time, started *atomic.Int64) {
	const batch = 1000
	var wg sync.WaitGroup
	for time.Now().Before(until) {
		wg.Add(batch)
		for i := 0; i < batch; i++ {
			go wg.Done()
		}
		wg.Wait()
		started.Add(batch)
	}
}

// quiet starts `rate` goroutines a second, each spending `work` of CPU.
func quiet(until time.Time, rate int, work time.Duration, started *atomic.Int64) {
	t := time.NewTicker(time.Second / time.Duration(rate))
	defer t.Stop()
	for now := range t.C {
		if now.After(until) {
			return
		}
		started.Add(1)
		go busy(work)
	}
}

// busy hashes until it has run for `work`.
func busy(work time.Duration) {
	buf := make([]byte, 1024)
	for begun := time.Now(); time.Since(begun) < work; {
		sum := sha256.Sum256(buf)
		buf[0] = sum[0]
	}
}
