// liveleaks holds goroutine leaks whose creator lives on: nothing exits,
// nothing grows without bound, yet the leaked goroutines can never run again
// because no running goroutine, global or timer reaches what they wait on.
// A detector that rests on "the creator exited" or on growth misses them.
//
// Usage: liveleaks <shape>. It prints "ready", waits for a "start" line on
// stdin, sets the leak up, prints "started <goroutines>" once the leaked
// goroutines are in place, and stays alive, main working, until stdin
// closes. Shapes: abba cycle3 strandonce wgmissing afterfunc poller.
//
// Standard library only, Go 1.19 syntax.
package main

import (
	"bufio"
	"fmt"
	"os"
	"runtime"
	"sync"
	"time"
)

// account is what real code guards with a mutex: state with a pointer in
// it. (A bare `new(sync.Mutex)` is a tiny allocation the runtime may pack
// into one 16-byte block with unrelated small values, such as a string's
// bytes: then anything holding those keeps the mutex's block alive, for the
// runtime's own detector as for any heap walk.)
type account struct {
	mu      sync.Mutex
	balance int
	owner   *string
}

// lockBoth takes first, waits until every party holds its first lock, then
// takes second: with the order crossed between parties, none gets through.
// The barrier makes the deadlock certain rather than a race.
func lockBoth(first, second *sync.Mutex, barrier *sync.WaitGroup) {
	first.Lock()
	barrier.Done()
	barrier.Wait()
	second.Lock()
}

// abba: two goroutines started by main take two mutexes in opposite orders.
// The mutexes are locals of this function, which returns.
func abba() {
	var a, b account
	var barrier sync.WaitGroup
	barrier.Add(2)
	go lockBoth(&a.mu, &b.mu, &barrier)
	go lockBoth(&b.mu, &a.mu, &barrier)
	settle()
}

// cycle3: three goroutines, three mutexes, each taking its own then the next.
func cycle3() {
	var m [3]sync.Mutex
	var barrier sync.WaitGroup
	barrier.Add(3)
	for i := 0; i < 3; i++ {
		go lockBoth(&m[i], &m[(i+1)%3], &barrier)
	}
	settle()
}

// fetch answers after delay; its caller may have stopped listening.
func fetch(out chan<- int, delay time.Duration) {
	time.Sleep(delay)
	out <- 42
}

// strandOnce: a loop that stays alive asks for a value with a timeout; the
// first answer is late, so its sender is stranded on an unbuffered channel
// only it still holds. Every later answer is on time.
func strandOnce() {
	stranded := make(chan struct{})
	go func() {
		for i := 0; ; i++ {
			delay := time.Millisecond
			if i == 0 {
				delay = 50 * time.Millisecond
			}
			out := make(chan int)
			go fetch(out, delay)
			select {
			case <-out:
			case <-time.After(20 * time.Millisecond):
				if i == 0 {
					close(stranded)
				}
			}
			time.Sleep(200 * time.Millisecond)
		}
	}()
	<-stranded
	settle()
}

// worker does a job; one of them forgets its Done.
func worker(wg *sync.WaitGroup, forget bool) {
	if !forget {
		defer wg.Done()
	}
	runtime.Gosched()
}

// waitBatch reports a batch once its workers are done.
func waitBatch(wg *sync.WaitGroup) {
	wg.Wait()
	fmt.Println("batch done")
}

// wgMissing: a live loop starts two workers and a waiter for them; one worker
// never calls Done, so the waiter waits for good. The loop goes on.
func wgMissing() {
	begun := make(chan struct{})
	go func() {
		for i := 0; ; i++ {
			if i == 0 {
				wg := new(sync.WaitGroup)
				wg.Add(2)
				go worker(wg, false)
				go worker(wg, true)
				go waitBatch(wg)
				close(begun)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}()
	<-begun
	settle()
}

// afterFunc: a timer's function blocks on a mutex that was locked and
// forgotten; only that goroutine (and this returned frame) ever held it.
func afterFunc() {
	acct := new(account)
	acct.mu.Lock()
	fired := make(chan struct{})
	time.AfterFunc(10*time.Millisecond, func() {
		close(fired)
		acct.mu.Lock()
	})
	<-fired
	settle()
}

// poller: a live poll loop strands one late sender every 3 s.
func poller() {
	first := make(chan struct{})
	go func() {
		for i := 0; ; i++ {
			out := make(chan int)
			go fetch(out, 50*time.Millisecond)
			select {
			case <-out:
			case <-time.After(10 * time.Millisecond):
			}
			if i == 0 {
				close(first)
			}
			time.Sleep(3 * time.Second)
		}
	}()
	<-first
	settle()
}

// settle lets the leaked goroutines reach their waits.
func settle() { time.Sleep(100 * time.Millisecond) }

var shapes = map[string]func(){
	"abba": abba, "cycle3": cycle3, "strandonce": strandOnce,
	"wgmissing": wgMissing, "afterfunc": afterFunc, "poller": poller,
}

// sink keeps main's work from being optimised away.
var sink int

// work is main's own ongoing activity: it stays runnable, never parked on
// anything a leaked goroutine needs.
func work() {
	for {
		for i := 0; i < 1000; i++ {
			sink += i
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func main() {
	if len(os.Args) != 2 || shapes[os.Args[1]] == nil {
		fmt.Fprintln(os.Stderr, "usage: liveleaks <shape>")
		os.Exit(2)
	}
	in := bufio.NewScanner(os.Stdin)
	fmt.Println("ready")
	if !in.Scan() || in.Text() != "start" {
		os.Exit(2)
	}
	go func() {
		for in.Scan() {
		}
		os.Exit(0)
	}()
	shapes[os.Args[1]]()
	fmt.Println("started", runtime.NumGoroutine())
	work()
}
