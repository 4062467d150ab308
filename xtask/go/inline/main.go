// inline is the fixture of the inline-aware symbolizer: it captures stacks
// from inside functions the compiler inlined (into ordinary functions, a
// closure, and the wrapper of a `go` statement) and prints, for each, the
// PCs runtime.Callers returned and the frames runtime.CallersFrames made of
// them. The agent's reading of the same PCs must give the same frames.
//
// Output, per stack:
//
//	stack NAME
//	pc 0xHEX                     (one per PC, innermost first)
//	frame FUNCTION\tFILE\tLINE   (one per frame)
//	end
//
// With the argument "park" it prints none of that. It prints "ready", and
// at the first line on stdin leaves goroutines blocked for good, one in a
// function inlined into the wrapper of its `go` statement and one in a
// function that is not inlined, prints "parked" and waits for stdin to
// close. The agent must name each blocking site after its own function,
// as the runtime's traceback does.
package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"runtime"
	"strings"
	"sync"
	"time"
)

// callers is small enough to be inlined wherever it is called.
func callers() []uintptr {
	pcs := make([]uintptr, 64)
	return pcs[:runtime.Callers(1, pcs)]
}

type stack struct {
	name string
	pcs  []uintptr
}

var (
	mu     sync.Mutex
	stacks []stack
)

func keep(name string, pcs []uintptr) {
	mu.Lock()
	stacks = append(stacks, stack{name, pcs})
	mu.Unlock()
}

// A chain inlined four deep into a function that is not inlined.
func d() []uintptr { return callers() }
func c() []uintptr { return d() }
func b() []uintptr { return c() }

//go:noinline
func deep() []uintptr { return b() }

type tx struct{ done chan struct{} }

// record is where the goroutines below capture their stacks.
//
//go:noinline
func record(name string, wg *sync.WaitGroup) {
	keep(name, callers())
	wg.Done()
}

// awaitDone is inlined into the wrapper of `go t.awaitDone(...)`, which the
// runtime then hides, showing awaitDone as the goroutine's bottom frame.
func (t *tx) awaitDone(wg *sync.WaitGroup) { record("go-method", wg) }

// inner is inlined into the closure started below.
func inner(wg *sync.WaitGroup) { record("go-closure", wg) }

// twice calls the same inlined function from two lines.
//
//go:noinline
func twice() ([]uintptr, []uintptr) {
	first := c()
	second := c()
	return first, second
}

// notInlined is an ordinary physical frame between inlined ones.
//
//go:noinline
func notInlined(wg *sync.WaitGroup) {
	keep("go-plain", d())
	wg.Done()
}

// slowLookup is inlined into the wrapper of `go slowLookup(...)` (Go ≥
// 1.22: main.fetchWithTimeout.gowrap1); its send blocks for good once
// fetchWithTimeout has stopped waiting.
func slowLookup(results chan<- string, key string) {
	time.Sleep(20 * time.Millisecond)
	results <- key
}

// fetchWithTimeout gives up on the lookup before it answers, leaving its
// sender blocked.
//
//go:noinline
func fetchWithTimeout(key string) {
	results := make(chan string)
	go slowLookup(results, key)
	select {
	case v := <-results:
		fmt.Println("answered in time:", v)
	case <-time.After(time.Millisecond):
	}
}

// stuckSend is not inlined: its goroutine's blocking frame is its own.
//
//go:noinline
func stuckSend(results chan<- string) {
	results <- "never read"
}

// abandon starts stuckSend and returns without reading.
//
//go:noinline
func abandon() {
	go stuckSend(make(chan string))
}

// park leaves both senders blocked, each from a goroutine that returns (as
// a request handler would), so their creators are gone.
func park() {
	fmt.Println("ready")
	in := bufio.NewReader(os.Stdin)
	in.ReadString('\n')
	for _, f := range []func(){func() { fetchWithTimeout("k") }, abandon} {
		done := make(chan struct{})
		go func() {
			f()
			close(done)
		}()
		<-done
	}
	fmt.Println("parked")
	io.Copy(io.Discard, in)
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == "park" {
		park()
		return
	}
	keep("deep", deep())
	one, two := twice()
	keep("twice-1", one)
	keep("twice-2", two)
	var wg sync.WaitGroup
	wg.Add(3)
	t := &tx{done: make(chan struct{})}
	go t.awaitDone(&wg)
	go func() { inner(&wg) }()
	go notInlined(&wg)
	wg.Wait()

	var out strings.Builder
	for _, s := range stacks {
		fmt.Fprintf(&out, "stack %s\n", s.name)
		for _, pc := range s.pcs {
			fmt.Fprintf(&out, "pc %#x\n", pc)
		}
		frames := runtime.CallersFrames(s.pcs)
		for {
			f, more := frames.Next()
			fmt.Fprintf(&out, "frame %s\t%s\t%d\n", f.Function, f.File, f.Line)
			if !more {
				break
			}
		}
		fmt.Fprintln(&out, "end")
	}
	os.Stdout.WriteString(out.String())
}
