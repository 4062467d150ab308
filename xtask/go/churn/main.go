// churn creates short-lived goroutines at a steady rate: every 10 ms a batch
// of -batch goroutines that each add to a shared sum and exit. It prints a
// line per second and a deterministic checksum at the end, so runs with and
// without the agent can be compared.
package main

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
)

func main() {
	batch := flag.Int("batch", 2000, "goroutines per 10 ms tick")
	ticks := flag.Int("ticks", 500, "number of ticks (0: run forever)")
	hold := flag.Bool("hold", false, "after the last tick, print the totals and wait for stdin to close")
	wait := flag.Bool("wait", false, "print \"ready\" and wait for a line on stdin before starting")
	flag.Parse()
	in := bufio.NewReader(os.Stdin)
	if *wait {
		// Start the GC's workers now so that only our goroutines are created later.
		runtime.GC()
		fmt.Println("ready")
		in.ReadString('\n')
	}
	var sum, created atomic.Int64
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for t := 0; *ticks == 0 || t < *ticks; t++ {
		<-tick.C
		var wg sync.WaitGroup
		wg.Add(*batch)
		for i := 0; i < *batch; i++ {
			go func(v int64) {
				sum.Add(v)
				wg.Done()
			}(int64(i))
		}
		wg.Wait()
		created.Add(int64(*batch))
		if t%100 == 99 {
			fmt.Printf("created %d\n", created.Load())
		}
	}
	fmt.Printf("total %d checksum %d\n", created.Load(), sum.Load())
	if *hold {
		time.Sleep(50 * time.Millisecond) // let the last batch reach goexit
		fmt.Printf("numgoroutine %d\n", runtime.NumGoroutine())
		io.Copy(io.Discard, in)
	}
}
