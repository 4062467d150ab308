// spawner is the kernel tests' fixture: it spawns exactly the goroutines it
// is told to, so the agent's counts can be checked against the truth.
//
// Protocol on stdin/stdout, one line each:
//
//	spawn E B   start E goroutines that exit and B that block until released;
//	            answers "done" once the E have exited and the B are parked
//	release     lets every blocked goroutine return; answers "released"
//	            once they have exited
//	exec PATH   replaces itself with PATH (same PID, another program)
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

// held is closed by "release"; each blocked goroutine is handed the
// channel of its batch, so a release never races with a later spawn.
var (
	held    = make(chan struct{})
	blocked sync.WaitGroup
)

func exiting(wg *sync.WaitGroup) { wg.Done() }

func blocking(started *sync.WaitGroup, release chan struct{}) {
	defer blocked.Done()
	started.Done()
	<-release
}

// settle gives goroutines that signalled a WaitGroup a moment to reach
// goexit: wg.Done runs before a goroutine's exit path.
func settle() { time.Sleep(50 * time.Millisecond) }

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
		if in.Text() == "release" {
			close(held)
			held = make(chan struct{})
			blocked.Wait()
			settle()
			fmt.Println("released", runtime.NumGoroutine())
			continue
		}
		// strings.CutPrefix is Go 1.20+; this builds with 1.19 too.
		if strings.HasPrefix(in.Text(), "exec ") {
			path := strings.TrimPrefix(in.Text(), "exec ")
			err := syscall.Exec(path, []string{path}, os.Environ())
			fmt.Println("error:", err)
			continue
		}
		if _, err := fmt.Sscanf(in.Text(), "spawn %d %d", &exit, &block); err != nil {
			fmt.Println("error:", err)
			continue
		}
		var done, started sync.WaitGroup
		done.Add(exit)
		started.Add(block)
		blocked.Add(block)
		for i := 0; i < exit; i++ {
			go exiting(&done)
		}
		for i := 0; i < block; i++ {
			go blocking(&started, held)
		}
		done.Wait()
		started.Wait()
		settle()
		fmt.Println("done", runtime.NumGoroutine())
	}
}
