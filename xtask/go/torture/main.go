// torture is the differential tests' fixture: work whose output is fully
// deterministic but that exercises what a probe reading the runtime could
// disturb: goroutine churn, channels, select, mutexes, stack growth and deep
// recursion (stack copying moves frames while probes read them), recovered
// panics, cgo calls and GC pressure. Run with and without the agent, it must
// print the same lines and exit with the same code (3, so that an exit code
// is compared too).
//
// With -wait it prints "ready" and waits for a line on stdin before working,
// and for another before exiting, so a test can attach first and read the
// agent's counts afterwards.
package main

/*
static unsigned long long mix(unsigned long long x) {
	x ^= x >> 33; x *= 0xff51afd7ed558ccdULL; x ^= x >> 33;
	return x;
}
*/
import "C"

import (
	"bufio"
	"flag"
	"fmt"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
)

// spawned counts the goroutines this program starts, for the test to check
// that the agent's probes saw at least as many.
var spawned int

func goN(wg *sync.WaitGroup, n int, f func(i int)) {
	spawned += n
	wg.Add(n)
	for i := 0; i < n; i++ {
		go func(i int) { defer wg.Done(); f(i) }(i)
	}
}

// deep recurses with a large frame so the goroutine's stack is copied
// several times on the way down.
func deep(n int) uint64 {
	var pad [256]byte
	pad[n%256] = byte(n)
	if n == 0 {
		return uint64(pad[0])
	}
	return deep(n-1) + uint64(pad[n%256]) + 1
}

func pipeline() uint64 {
	src, sq := make(chan uint64), make(chan uint64, 8)
	var wg sync.WaitGroup
	goN(&wg, 16, func(int) {
		for v := range src {
			sq <- v * v
		}
	})
	go func() {
		for i := uint64(0); i < 20000; i++ {
			src <- i
		}
		close(src)
	}()
	spawned++
	go func() { wg.Wait(); close(sq) }()
	spawned++
	var sum uint64
	for v := range sq {
		sum += v
	}
	return sum
}

func selects() uint64 {
	a, b, quit := make(chan uint64), make(chan uint64), make(chan struct{})
	var wg sync.WaitGroup
	goN(&wg, 4, func(i int) {
		for k := uint64(0); k < 2000; k++ {
			if i%2 == 0 {
				a <- k
			} else {
				b <- 2 * k
			}
		}
	})
	go func() { wg.Wait(); close(quit) }()
	spawned++
	var sum uint64
	for {
		select {
		case v := <-a:
			sum += v
		case v := <-b:
			sum += v
		case <-quit:
			return sum
		}
	}
}

func mutexes() uint64 {
	var mu sync.Mutex
	var rw sync.RWMutex
	var total uint64
	var reads atomic.Uint64
	var wg sync.WaitGroup
	goN(&wg, 32, func(i int) {
		for k := 0; k < 500; k++ {
			mu.Lock()
			total += uint64(i*k) % 7
			mu.Unlock()
			rw.RLock()
			reads.Add(1) // read-locked: many readers at once
			rw.RUnlock()
		}
	})
	wg.Wait()
	return total*1000003 + reads.Load()
}

func stacks() uint64 {
	results := make([]uint64, 64)
	var wg sync.WaitGroup
	goN(&wg, 64, func(i int) { results[i] = deep(2000 + i*37) })
	wg.Wait()
	var sum uint64
	for _, r := range results {
		sum += r
	}
	return sum
}

func panics() uint64 {
	var recovered uint64
	var mu sync.Mutex
	var wg sync.WaitGroup
	goN(&wg, 200, func(i int) {
		defer func() {
			if r := recover(); r != nil {
				mu.Lock()
				recovered += uint64(len(fmt.Sprint(r)))
				mu.Unlock()
			}
		}()
		if i%3 == 0 {
			var m map[int]uint64
			m[i] = deep(i) // nil map write
		}
		panic(fmt.Sprintf("boom %d", i))
	})
	wg.Wait()
	return recovered
}

func cgo() uint64 {
	results := make([]uint64, 50)
	var wg sync.WaitGroup
	goN(&wg, 50, func(i int) {
		for k := 0; k < 200; k++ {
			results[i] += uint64(C.mix(C.ulonglong(i*1000 + k)))
		}
	})
	wg.Wait()
	var sum uint64
	for _, r := range results {
		sum ^= r
	}
	return sum
}

func garbage() uint64 {
	var wg sync.WaitGroup
	sums := make([]uint64, 8)
	goN(&wg, 8, func(i int) {
		var keep [][]byte
		for k := 0; k < 3000; k++ {
			b := make([]byte, 1024+k%4096)
			b[len(b)-1] = byte(k)
			sums[i] += uint64(b[len(b)-1])
			if k%100 == 0 {
				keep = append(keep, b)
			}
		}
		sums[i] += uint64(len(keep))
	})
	runtime.GC()
	wg.Wait()
	var sum uint64
	for _, s := range sums {
		sum += s
	}
	return sum
}

// churn spawns short goroutines in waves, each passing a token on.
func churn() uint64 {
	var total uint64
	for wave := 0; wave < 20; wave++ {
		ch := make(chan uint64, 1)
		ch <- uint64(wave)
		var wg sync.WaitGroup
		goN(&wg, 250, func(i int) {
			v := <-ch
			ch <- v + uint64(i)
		})
		wg.Wait()
		total += <-ch
	}
	return total
}

func main() {
	wait := flag.Bool("wait", false, `print "ready", wait for a line before working and another before exiting`)
	flag.Parse()
	in := bufio.NewReader(os.Stdin)
	if *wait {
		runtime.GC()
		fmt.Println("ready")
		in.ReadString('\n')
	}
	for _, phase := range []struct {
		name string
		f    func() uint64
	}{
		{"pipeline", pipeline}, {"select", selects}, {"mutex", mutexes},
		{"stacks", stacks}, {"panics", panics}, {"cgo", cgo},
		{"garbage", garbage}, {"churn", churn},
	} {
		fmt.Println(phase.name, phase.f())
	}
	fmt.Println("spawned", spawned)
	if *wait {
		in.ReadString('\n')
	}
	os.Exit(3)
}
