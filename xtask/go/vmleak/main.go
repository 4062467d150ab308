// vmleak is the arm64 VM test's leak: on "leak" it starts one goroutine
// that sends on a channel its creator drops at once, so the send can never
// complete and nothing can reach the channel again.
//
// Protocol on stdin/stdout, one line each:
//
//	leak   starts the leaking goroutine; answers "ok leak" once it parked
//	quit   exits
package main

import (
	"bufio"
	"fmt"
	"os"
	"time"
)

// abandon is a request handler that gives up waiting for its worker.
//
//go:noinline
func abandon() {
	result := make(chan int)
	go func() { result <- 42 }()
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
		default:
			fmt.Println("error: unknown command")
		}
	}
}
