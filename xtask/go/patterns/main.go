// patterns holds goroutine patterns that must be called leaks and patterns
// that must stay quiet, started on command so a test can check each verdict.
//
// Protocol: one command per stdin line, answered by "ok <command>".
//
//	leaks    start the leaking patterns (each created by a goroutine that returns)
//	quiet    start the patterns that are not leaks
//	misuse   double close, send on closed and close of nil, each recovered
//	quit     exit
package main

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"
)

// --- must be called leaks -------------------------------------------------

// leakySend is a request handler that gives up waiting: the worker's send
// can never complete.
func leakySend() {
	result := make(chan int)
	go func() { result <- 42 }()
}

// leakyRecv waits for a value nobody will ever send.
func leakyRecv() {
	never := make(chan int)
	go func() { <-never }()
}

// leakyNil receives from a nil channel: nothing can wake it.
func leakyNil() {
	var c chan int
	go func() { <-c }()
}

// leakyWaitGroup waits for a Done that never comes.
func leakyWaitGroup() {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { wg.Wait() }()
}

// leakyMutex blocks on a mutex its creator locked and forgot.
func leakyMutex() {
	var mu sync.Mutex
	mu.Lock()
	go func() { mu.Lock() }()
}

// leakyContext starts a worker on a context that is never cancelled.
func leakyContext() {
	ctx, cancel := context.WithCancel(context.Background())
	_ = cancel // the bug: cancel is dropped
	go func() {
		select {
		case <-ctx.Done():
		}
	}()
}

// --- must stay quiet ------------------------------------------------------

var jobs = make(chan int)

// globalJobs is reachable from a package-level variable: code may still send.
var globalJobs = make(chan int)

func quietPool() {
	for i := 0; i < 4; i++ {
		go func() {
			for range jobs {
			}
		}()
	}
}

func quietGlobal() {
	go func() {
		for range globalJobs {
		}
	}()
}

func quietTicker() {
	go func() {
		t := time.NewTicker(200 * time.Millisecond)
		for range t.C {
		}
	}()
}

func quietSleeper() {
	go func() {
		for {
			time.Sleep(time.Hour)
		}
	}()
}

func quietSignal() {
	go func() {
		c := make(chan os.Signal, 1)
		signal.Notify(c, syscall.SIGUSR2)
		<-c
	}()
}

func quietNetwork() {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			conn.Close()
		}
	}()
}

// --- misuse ---------------------------------------------------------------

//go:noinline
func firstCloser(c chan int) { close(c) }

//go:noinline
func secondCloser(c chan int) { close(c) }

func doubleClose() {
	defer func() { recover() }()
	c := make(chan int)
	firstCloser(c)
	secondCloser(c)
}

func sendOnClosed() {
	defer func() { recover() }()
	c := make(chan int, 1)
	close(c)
	c <- 1
}

func closeNil() {
	defer func() { recover() }()
	var c chan int
	close(c)
}

// spawnFrom runs f in a goroutine that returns at once, as a request
// handler would.
func spawnFrom(f func()) {
	done := make(chan struct{})
	go func() {
		f()
		close(done)
	}()
	<-done
}

// busy makes the service hot for good, as a loaded server is: a goroutine
// per unit of work (a few hundred thousand a second) and a pair handing
// values over an unbuffered channel (a park per handoff), so that the
// agent's overhead budget takes its probes away while the leaks stay.
func busy() {
	go func() {
		var wg sync.WaitGroup
		for {
			wg.Add(100)
			for i := 0; i < 100; i++ {
				go wg.Done()
			}
			wg.Wait()
		}
	}()
	ping := make(chan int)
	go func() {
		for v := range ping {
			_ = v
		}
	}()
	go func() {
		for i := 0; ; i++ {
			ping <- i
		}
	}()
}

func main() {
	fmt.Println("ready")
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		switch cmd := in.Text(); cmd {
		case "leaks":
			for _, f := range []func(){leakySend, leakyRecv, leakyNil, leakyWaitGroup, leakyMutex, leakyContext} {
				spawnFrom(f)
			}
		case "quiet":
			quietPool()
			quietGlobal()
			quietTicker()
			quietSleeper()
			quietSignal()
			quietNetwork()
		case "busy":
			busy()
		case "misuse":
			doubleClose()
			sendOnClosed()
			closeNil()
		case "quit":
			return
		default:
			fmt.Println("unknown", cmd)
			continue
		}
		fmt.Println("ok", in.Text())
	}
}
