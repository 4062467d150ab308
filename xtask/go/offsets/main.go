// offsets is the probe program `cargo xtask offsets` compiles with every
// supported Go toolchain: its DWARF gives the runtime struct layouts that
// stripped binaries of the same release share. It touches channels,
// select, timers and the sync primitives so that their runtime code is
// linked (the heap walker's layouts: sudogs in semtable, P timer heaps).
package main

import (
	"fmt"
	"sync"
	"time"
)

func main() {
	var mu sync.Mutex
	var wg sync.WaitGroup
	c := make(chan int, 1)
	done := make(chan struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		mu.Lock()
		c <- 1
		mu.Unlock()
	}()
	select {
	case v := <-c:
		fmt.Println("got", v)
	case <-done:
	case <-time.After(time.Minute):
	}
	wg.Wait()
}
