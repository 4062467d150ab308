// demo is a small HTTP-less "service" that leaks: every 200 ms it handles a
// request that starts a worker to compute an answer and waits for it with a
// timeout. When the timeout wins, nobody ever reads the worker's result and
// the worker stays blocked on its send forever: the classic leak.
package main

import (
	"fmt"
	"math/rand"
	"runtime"
	"time"
)

func compute(id int) int {
	time.Sleep(time.Duration(rand.Intn(100)) * time.Millisecond)
	return id * 2
}

func handle(id int) {
	result := make(chan int) // unbuffered: the bug
	go func() { result <- compute(id) }()
	select {
	case <-result:
	case <-time.After(50 * time.Millisecond):
		// gives up; the worker above is now stuck forever
	}
}

// startPool starts an idle worker pool and returns: the workers wait on a
// channel only they hold. An idle pool looks like this too, so the agent
// calls it a suspect, not a leak.
func startPool() {
	jobs := make(chan int)
	for i := 0; i < 3; i++ {
		go func() {
			for j := range jobs {
				_ = compute(j)
			}
		}()
	}
	jobs <- 1
}

func main() {
	fmt.Println("demo: handling a request every 200ms; about half leak a goroutine")
	go startPool()
	for id := 0; ; id++ {
		go handle(id)
		time.Sleep(200 * time.Millisecond)
		if id%25 == 24 {
			fmt.Printf("demo: %d requests, runtime.NumGoroutine()=%d\n", id+1, runtime.NumGoroutine())
		}
	}
}
