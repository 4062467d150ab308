// vmleak is the arm64 VM test's leak, channel misuse and death: on "leak"
// it starts one goroutine that sends on a channel its creator drops at
// once, so the send can never complete and nothing can reach the channel
// again.
//
// Protocol on stdin/stdout, one line each:
//
//	hold    starts a worker waiting on a channel that only its holder's
//	        stack frame reaches, the holder asleep with the channel live
//	        after the sleep: not a leak, and judged so only if the agent
//	        reads the holder's frame right; answers "ok hold"
//	leak    starts the leaking goroutine; answers "ok leak" once it parked
//	misuse  closes a closed channel and sends on a closed one, each panic
//	        recovered as a server's handler middleware would; answers
//	        "ok misuse"
//	unlock  unlocks an unlocked mutex: the runtime's fatal error, which no
//	        recover stops, and the process dies (exit status 2)
//	panic   panics with PanicMessage and nothing recovers it: the process
//	        dies (exit status 2)
//	quit    exits
package main

import (
	"bufio"
	"fmt"
	"os"
	"sync"
	"time"
)

// abandon is a request handler that gives up waiting for its worker.
//
//go:noinline
func abandon() {
	result := make(chan int)
	go func() { result <- 42 }()
}

// holder keeps work in a local across a long sleep, then sends on it.
//
//go:noinline
func holder(started chan<- struct{}) {
	work := make(chan int)
	go func() { <-work }()
	started <- struct{}{}
	time.Sleep(24 * time.Hour)
	work <- 1
}

// recovered runs f and swallows its panic.
func recovered(f func()) {
	defer func() { _ = recover() }()
	f()
}

//go:noinline
func misuse() {
	done := make(chan struct{})
	close(done)
	recovered(func() { close(done) })
	results := make(chan int, 1)
	close(results)
	recovered(func() { results <- 1 })
}

//go:noinline
func unlock() {
	var mu sync.Mutex
	mu.Unlock()
}

// PanicMessage is the unrecovered panic's value; the VM's judge looks for
// it in the agent's record of the death.
const PanicMessage = "vmleak: the worker pool is gone"

//go:noinline
func giveUp() {
	panic(PanicMessage)
}

func main() {
	fmt.Println("ready")
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		switch in.Text() {
		case "quit":
			return
		case "leak":
			abandon()
			// Let the sender reach gopark before answering.
			time.Sleep(50 * time.Millisecond)
			fmt.Println("ok leak")
		case "hold":
			started := make(chan struct{})
			go holder(started)
			<-started
			time.Sleep(50 * time.Millisecond)
			fmt.Println("ok hold")
		case "misuse":
			misuse()
			fmt.Println("ok misuse")
		case "unlock":
			unlock()
		case "panic":
			giveUp()
		default:
			fmt.Println("error: unknown command")
		}
	}
}
