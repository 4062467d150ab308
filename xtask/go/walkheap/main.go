// walkheap builds a heap of a given size for the heap-walk benchmark: a
// pointer-linked list of 64-byte nodes held by a global, a goroutine parked
// on a channel the list holds (reachable) and one parked on a channel
// nothing holds (leaked). A worker keeps computing; on each "go" line the
// program reports the worker's cost per unit of work over two seconds, so
// the bench can compare its throughput with and without heap walks.
//
// Usage: walkheap <MiB>. Prints "ready", then "ns_per_op <x>" per "go".
package main

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"sync/atomic"
	"time"
)

type node struct {
	next *node
	ch   chan int
	pad  [6]uint64
}

var (
	heads []*node
	units atomic.Int64
)

func build(mib int) {
	n := mib << 20 / 64
	var prev *node
	for i := 0; i < n; i++ {
		prev = &node{next: prev}
		if i%4096 == 0 {
			heads = append(heads, prev)
		}
	}
	heads = append(heads, prev)
}

// work is the target's own throughput: a unit is a fixed amount of
// arithmetic, counted atomically.
func work() {
	for {
		s := uint64(1)
		for i := 0; i < 20000; i++ {
			s = s*6364136223846793005 + 1442695040888963407
		}
		if s == 0 {
			fmt.Println()
		}
		units.Add(1)
	}
}

func main() {
	mib, err := strconv.Atoi(os.Args[len(os.Args)-1])
	if err != nil || mib <= 0 {
		fmt.Fprintln(os.Stderr, "usage: walkheap <MiB>")
		os.Exit(2)
	}
	build(mib)
	held := make(chan int)
	heads[0].ch = held
	go func() { held <- 1 }()
	go func(c chan int) { <-c }(make(chan int))
	go work()
	fmt.Println("ready")
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		u0, t0 := units.Load(), time.Now()
		time.Sleep(2 * time.Second)
		u1, t1 := units.Load(), time.Now()
		fmt.Printf("ns_per_op %f\n", float64(t1.Sub(t0).Nanoseconds())/float64(u1-u0))
	}
}
