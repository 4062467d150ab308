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
package main

import (
	"fmt"
	"os"
	"runtime"
	"strings"
	"sync"
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

func main() {
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
