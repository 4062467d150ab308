// spawner is the kernel tests' fixture: it spawns exactly the goroutines it
// is told to, so the agent's counts can be checked against the truth.
//
// Protocol on stdin/stdout, one line each:
//
//	spawn E B   start E goroutines that exit and B that block forever;
//	            answers "done" once the E have exited and the B are parked
//	exec PATH   replaces itself with the executable PATH (same PID)
//	quit        exits
package main

import (
	"bufio"
	"fmt"
	"os"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"
)

var forever = make(chan struct{})

func exiting(wg *sync.WaitGroup) { wg.Done() }

func blocking(started *sync.WaitGroup) {
	started.Done()
	<-forever
}

func main() {
	// Start the GC's background workers now, so they are not created in
	// the middle of a measured batch.
	runtime.GC()
	fmt.Println("ready")
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		var exit, block int
		if in.Text() == "quit" {
			return
		}
		if strings.HasPrefix(in.Text(), "exec ") {
			path := strings.TrimPrefix(in.Text(), "exec ")
			fmt.Println("error:", syscall.Exec(path, []string{path}, os.Environ()))
			continue
		}
		if _, err := fmt.Sscanf(in.Text(), "spawn %d %d", &exit, &block); err != nil {
			fmt.Println("error:", err)
			continue
		}
		var done, started sync.WaitGroup
		done.Add(exit)
		started.Add(block)
		for i := 0; i < exit; i++ {
			go exiting(&done)
		}
		for i := 0; i < block; i++ {
			go blocking(&started)
		}
		done.Wait()
		started.Wait()
		// wg.Done runs before the goroutine's exit path: give the last
		// ones a moment to reach goexit.
		time.Sleep(50 * time.Millisecond)
		fmt.Println("done", runtime.NumGoroutine())
	}
}
