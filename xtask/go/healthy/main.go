// healthy holds long-lived goroutine shapes of real services that are not
// leaks: each runs again when its peer, timer, signal or request comes, so a
// leak detector must never call any of them `leak`. Standard library only,
// Go 1.19 syntax. Usage: healthy <shape> (see shapes); it prints "ready",
// waits for "start" on stdin, sets the shape up, prints "started
// <goroutines>" and stays alive until stdin closes.
package main

import (
	"bufio"
	"context"
	"database/sql"
	"database/sql/driver"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime"
	"sync"
	"syscall"
	"time"
)

// httpShape leaves idle keep-alive connections: the client's readLoop and
// writeLoop (started by a dialing goroutine that returned) and the server's
// per-connection goroutines wait for a next request the pool allows any time.
func httpShape() {
	ln := listen()
	go http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	// No IdleConnTimeout: idle connections stay pooled for good, as often.
	client := &http.Client{Transport: &http.Transport{}}
	keep = append(keep, client)
	var wg sync.WaitGroup
	for c := 0; c < 2; c++ {
		wg.Add(1)
		go func() { // a request goroutine that returns
			defer wg.Done()
			for i := 0; i < 10; i++ { // bounded: 20 requests in all
				resp, err := client.Get("http://" + ln.Addr().String() + "/")
				must(err)
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		}()
	}
	wg.Wait()
}

// memDriver is an in-process database/sql driver: every statement succeeds.
type memDriver struct{}
type memConn struct{}
type memStmt struct{}

func (memDriver) Open(string) (driver.Conn, error)         { return memConn{}, nil }
func (memConn) Prepare(string) (driver.Stmt, error)        { return memStmt{}, nil }
func (memConn) Close() error                               { return nil }
func (memConn) Begin() (driver.Tx, error)                  { return nil, fmt.Errorf("no transactions") }
func (memStmt) Close() error                               { return nil }
func (memStmt) NumInput() int                              { return -1 }
func (memStmt) Exec([]driver.Value) (driver.Result, error) { return driver.RowsAffected(1), nil }
func (memStmt) Query([]driver.Value) (driver.Rows, error)  { return nil, fmt.Errorf("no rows") }

var dbOnce sync.Once
var db *sql.DB

// sqlShape opens the pool lazily from a request goroutine that returns: its
// connectionOpener waits for requests as long as the *sql.DB (a global) lives.
func sqlShape() {
	sql.Register("mem", memDriver{})
	for i := 0; i < 3; i++ {
		runReturning(func() {
			// sql.Open fails only for an unregistered driver.
			dbOnce.Do(func() { db, _ = sql.Open("mem", "") })
			_, err := db.Exec("UPDATE t SET n = n + 1")
			must(err)
		})
	}
}

type transport struct {
	conn    net.Conn
	control chan []byte
	done    chan struct{}
}

var registryMu sync.Mutex
var registry = map[string]*transport{}

// serveConn, the accept handler, starts a transport, registers it, returns.
func serveConn(c net.Conn) {
	t := &transport{conn: c, control: make(chan []byte), done: make(chan struct{})}
	go t.writer()
	go t.keepalive()
	go t.reader()
	registryMu.Lock()
	registry[c.RemoteAddr().String()] = t
	registryMu.Unlock()
}

func registered() int { registryMu.Lock(); defer registryMu.Unlock(); return len(registry) }
func (t *transport) writer() {
	for {
		select {
		case frame := <-t.control:
			t.conn.Write(frame)
		case <-t.done:
			return
		}
	}
}
func (t *transport) keepalive() {
	for {
		select {
		case <-time.After(2 * time.Hour):
			t.control <- []byte("ping")
		case <-t.done:
			return
		}
	}
}
func (t *transport) reader() { io.Copy(io.Discard, t.conn); close(t.done) }

func grpcShape() {
	ln := listen()
	go func() {
		for c, err := ln.Accept(); err == nil; c, err = ln.Accept() {
			go serveConn(c)
		}
	}()
	for i := 0; i < 2; i++ { // two client connections, kept open
		c, err := net.Dial("tcp", ln.Addr().String())
		must(err)
		c.Write([]byte("hello"))
		keep = append(keep, c)
	}
	for registered() < 2 {
		time.Sleep(10 * time.Millisecond)
	}
}

// poolShape: a supervisor waits for workers waiting for jobs every 20 s.
func poolShape() {
	jobs := make(chan int)
	runReturning(func() {
		go func() { // supervisor
			var wg sync.WaitGroup
			for i := 0; i < 4; i++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for range jobs {
					}
				}()
			}
			wg.Wait()
		}()
		go func() { // producer
			for range time.NewTicker(20 * time.Second).C {
				jobs <- 1
			}
		}()
	})
}

// group is a minimal errgroup: the first error wins and cancels the context.
type group struct {
	wg      sync.WaitGroup
	errOnce sync.Once
	err     error
	cancel  func()
}

func withContext(ctx context.Context) (*group, context.Context) {
	ctx, cancel := context.WithCancel(ctx)
	return &group{cancel: cancel}, ctx
}
func (g *group) Go(f func() error) {
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		if err := f(); err != nil {
			g.errOnce.Do(func() { g.err = err; g.cancel() })
		}
	}()
}
func (g *group) Wait() error { g.wg.Wait(); g.cancel(); return g.err }

// errgroupShape: a request fans out slow calls (an hour each) and waits for
// them, as a batch job would; the calls will finish, so will the wait.
func errgroupShape() {
	requests := make(chan int)
	keep = append(keep, requests)
	go func() { // the server loop: one handler per request, stays alive
		for r := range requests {
			go func(r int) {
				g, ctx := withContext(context.Background())
				for i := 0; i < 3; i++ {
					g.Go(func() error {
						select {
						case <-ctx.Done():
							return ctx.Err()
						case <-time.After(time.Hour):
							return nil
						}
					})
				}
				g.Wait()
			}(r)
		}
	}()
	requests <- 1
}

// signalLoop registers for sig itself, then handles it for good.
func signalLoop(sig os.Signal) { c := make(chan os.Signal, 1); signal.Notify(c, sig); onSignal(c) }
func onSignal(c chan os.Signal) {
	for sig := range c {
		fmt.Println("got", sig)
	}
}

func signalShape() {
	runReturning(func() { // a Start() in a setup goroutine registers; the loop only receives
		c := make(chan os.Signal, 1)
		signal.Notify(c, syscall.SIGHUP)
		go onSignal(c)
	})
}

// selectForever is the daemon's main: start the loops, then park for good.
func selectForever() {
	go func() {
		for range time.NewTicker(30 * time.Second).C {
			runtime.GC()
		}
	}()
	go signalLoop(syscall.SIGUSR1)
	time.Sleep(100 * time.Millisecond)
	started()
	select {}
}

var quit = make(chan struct{})

func timersShape() {
	runReturning(func() {
		go func() { // a retry loop with a long back-off
			for {
				select {
				case <-time.After(time.Hour):
				case <-quit:
					return
				}
			}
		}()
		go func() { <-time.After(time.Hour) }() // a lone back-off: only its timer can wake it
		go func() {                             // an hourly report
			for range time.NewTicker(time.Hour).C {
			}
		}()
	})
}

type queue struct {
	mu    sync.Mutex
	cond  *sync.Cond
	items []int
}

func (q *queue) push(n int) {
	q.mu.Lock()
	q.items = append(q.items, n)
	q.mu.Unlock()
	q.cond.Signal()
}

var services = map[string]interface{}{}

func condShape() {
	runReturning(func() {
		q := &queue{}
		q.cond = sync.NewCond(&q.mu)
		services["queue"] = q
		go func() { // consumer: items are rare
			for {
				q.mu.Lock()
				for len(q.items) == 0 {
					q.cond.Wait()
				}
				q.items = q.items[1:]
				q.mu.Unlock()
			}
		}()
		go func() { // producer: one item a minute
			for range time.NewTicker(time.Minute).C {
				q.push(1)
			}
		}()
	})
}

var rootCtx, rootCancel = context.WithCancel(context.Background())

func contextShape() {
	runReturning(func() {
		child, cancel := context.WithCancel(rootCtx)
		grandchild, cancel2 := context.WithTimeout(child, 24*time.Hour)
		keep = append(keep, cancel, cancel2)
		// Two workers on each of root and child share a Done channel; a
		// lone request-scoped watcher has the grandchild's to itself.
		for _, ctx := range []context.Context{rootCtx, rootCtx, child, child, grandchild} {
			go func(ctx context.Context) { <-ctx.Done() }(ctx)
		}
	})
}

type cache struct {
	mu   sync.Mutex
	m    map[string]string
	stop chan struct{}
}

var cacheOnce sync.Once
var theCache *cache

func getCache() *cache {
	cacheOnce.Do(func() {
		theCache = &cache{m: map[string]string{}, stop: make(chan struct{})}
		go theCache.janitor()
	})
	return theCache
}
func (c *cache) set(k, v string) { c.mu.Lock(); c.m[k] = v; c.mu.Unlock() }
func (c *cache) reset()          { c.mu.Lock(); c.m = map[string]string{}; c.mu.Unlock() }
func (c *cache) janitor() {
	t := time.NewTicker(10 * time.Minute)
	for {
		select {
		case <-t.C:
			c.reset()
		case <-c.stop:
			return
		}
	}
}

func cacheShape() {
	for i := 0; i < 3; i++ {
		runReturning(func() { getCache().set("k", "v") }) // a request
	}
}

// pipe is a resource with a finalizer, as os.File and net.Conn have: a
// goroutine waits on its channel, and the finalizer closes that channel
// once the pipe is dropped. Nothing else holds the channel, yet the
// finalizer can still wake the goroutine: not a leak (for the runtime's own
// detector neither: what a finalizer can touch is a root). The shape
// allocates little, so no GC runs its finalizer while it is watched.
type pipe struct{ data chan []byte }

func finalizerShape() {
	for i := 0; i < 2; i++ {
		p := &pipe{data: make(chan []byte)}
		go drain(p.data)
		runtime.SetFinalizer(p, func(p *pipe) { close(p.data) })
	}
}
func drain(c chan []byte) {
	for range c {
	}
}

// keep holds what a service would hold in its own structures.
var keep []interface{}

func listen() net.Listener {
	ln, err := net.Listen("tcp", "127.0.0.1:0") // loopback only
	must(err)
	return ln
}
func must(err error) {
	if err != nil {
		panic(err)
	}
}

// runReturning runs f in a goroutine that returns, as a request handler would.
func runReturning(f func()) {
	done := make(chan struct{})
	go func() { f(); close(done) }()
	<-done
}
func started() { fmt.Println("started", runtime.NumGoroutine()) }

var shapes = map[string]func(){"http": httpShape, "sql": sqlShape, "grpc": grpcShape,
	"pool": poolShape, "errgroup": errgroupShape, "signal": signalShape, "selectforever": selectForever,
	"timers": timersShape, "cond": condShape, "context": contextShape, "cache": cacheShape,
	"finalizer": finalizerShape}

func main() {
	if len(os.Args) != 2 || shapes[os.Args[1]] == nil {
		fmt.Fprintln(os.Stderr, "usage: healthy <shape>")
		os.Exit(2)
	}
	in := bufio.NewScanner(os.Stdin)
	fmt.Println("ready")
	if !in.Scan() || in.Text() != "start" {
		os.Exit(2)
	}
	// The process ends with its stdin, whatever main is doing.
	go func() { io.Copy(io.Discard, os.Stdin); os.Exit(0) }()
	shapes[os.Args[1]]()
	// Let the shape's goroutines reach their waits before counting them.
	time.Sleep(100 * time.Millisecond)
	started()
	for {
		time.Sleep(time.Hour)
	}
}
