// Command deaths dies of the death it is told to, for the fatal-path tests.
// It prints "ready", then reads one line naming the death from stdin (or
// takes it from its first argument, after an optional delay in its second)
// and dies of it. "recover" instead panics and recovers many times, in each
// of the ways the others die of a panic, and exits 0.
// Standard library only; Go 1.19 syntax.
package main

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
	"sync"
	"syscall"
	"time"
)

//go:noinline
func mapWriter(m map[int]int, n int) {
	for i := 0; ; i++ {
		m[i%1024] = n
	}
}

// Two goroutines write one map without a lock until the runtime notices.
func concurrentMapWrites() {
	m := map[int]int{}
	go mapWriter(m, 1)
	mapWriter(m, 2)
}

//go:noinline
func waitForever() {
	ch := make(chan int)
	<-ch
}

//go:noinline
func unlockUnlocked() {
	var mu sync.Mutex
	mu.Unlock()
}

//go:noinline
func negativeWaitGroup() {
	var wg sync.WaitGroup
	wg.Done()
}

//go:noinline
func closeTwice() {
	ch := make(chan int)
	close(ch)
	close(ch)
}

//go:noinline
func sendOnClosed() {
	ch := make(chan int, 1)
	close(ch)
	ch <- 1
}

var nilMap map[string]int

//go:noinline
func nilMapWrite() {
	nilMap["key"] = 1
}

//go:noinline
func recurse(n int) int {
	var pad [16]int
	pad[n%16] = n
	return recurse(n+1) + pad[(n+1)%16]
}

func stackOverflow() {
	debug.SetMaxStack(1 << 20)
	recurse(0)
}

//go:noinline
func plainPanic() {
	panic(errors.New("ledger out of balance"))
}

var sink [][]byte

//go:noinline
func outOfMemory() {
	// Address space capped at 1 GiB above what is mapped: the heap
	// cannot grow and the runtime throws "out of memory".
	limit := syscall.Rlimit{Cur: 1 << 30, Max: 1 << 30}
	if err := syscall.Setrlimit(syscall.RLIMIT_AS, &limit); err != nil {
		fmt.Println("setrlimit:", err)
		os.Exit(3)
	}
	for {
		sink = append(sink, make([]byte, 64<<20))
	}
}

// try runs f and recovers what it panics with.
func try(f func()) (r any) {
	defer func() { r = recover() }()
	f()
	return nil
}

// recoverAll panics in every recoverable way, recovers each, and lives.
func recoverAll() {
	for i := 0; i < 200; i++ {
		for _, f := range []func(){negativeWaitGroup, closeTwice, sendOnClosed, nilMapWrite, plainPanic} {
			if try(f) == nil {
				fmt.Println("did not panic")
				os.Exit(1)
			}
		}
	}
	runtime.GC()
}

var deaths = map[string]func(){
	"concurrent_map_access": concurrentMapWrites,
	"all_asleep":            waitForever,
	"unlock_of_unlocked":    unlockUnlocked,
	"negative_waitgroup":    negativeWaitGroup,
	"close_of_closed":       closeTwice,
	"send_on_closed":        sendOnClosed,
	"nil_map_write":         nilMapWrite,
	"stack_overflow":        stackOverflow,
	"panic":                 plainPanic,
	"out_of_memory":         outOfMemory,
}

func main() {
	var name string
	if len(os.Args) > 1 {
		name = os.Args[1]
		if len(os.Args) > 2 {
			d, err := time.ParseDuration(os.Args[2])
			if err != nil {
				fmt.Println(err)
				os.Exit(2)
			}
			time.Sleep(d)
		}
	} else {
		fmt.Println("ready")
		line, _ := bufio.NewReader(os.Stdin).ReadString('\n')
		name = line[:len(line)-len("\n")]
	}
	if name == "recover" {
		recoverAll()
		fmt.Println("ok recover")
		bufio.NewReader(os.Stdin).ReadString('\n')
		return
	}
	f, ok := deaths[name]
	if !ok {
		fmt.Println("unknown death", name)
		os.Exit(2)
	}
	f()
}
