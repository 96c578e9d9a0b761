package bench

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// goRuntime is what a Go process of the system under test says about its runtime through the
// gateway's admin-only /debug/pprof endpoints.
type goRuntime struct {
	HeapInuse  int64 // bytes in spans holding objects (runtime.MemStats.HeapInuse)
	HeapAlloc  int64 // bytes of allocated objects
	StackInuse int64 // bytes of goroutine stacks
	Mallocs    int64 // objects allocated since the process started
	Goroutines int64
}

// readGoRuntime asks the gateway at baseURL for its heap profile's memory statistics (after a
// collection if gc, so that the heap is what is live) and its goroutine count.
func readGoRuntime(ctx context.Context, baseURL, token string, gc bool) (*goRuntime, error) {
	get := func(path string) ([]byte, error) {
		ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, baseURL+path, nil)
		if err != nil {
			return nil, err
		}
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return nil, err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
		if err != nil {
			return nil, err
		}
		if resp.StatusCode != http.StatusOK {
			return nil, fmt.Errorf("GET %s: %s", path, resp.Status)
		}
		return b, nil
	}
	heapPath := "/debug/pprof/heap?debug=1"
	if gc {
		heapPath += "&gc=1"
	}
	heap, err := get(heapPath)
	if err != nil {
		return nil, err
	}
	g, err := get("/debug/pprof/goroutine?debug=1")
	if err != nil {
		return nil, err
	}
	rt, err := parseHeapProfile(heap)
	if err != nil {
		return nil, err
	}
	if rt.Goroutines, err = parseGoroutineTotal(g); err != nil {
		return nil, err
	}
	return rt, nil
}

// parseHeapProfile reads the runtime.MemStats lines at the end of a text heap profile
// (runtime/pprof, debug=1): "# HeapInuse = N", "# Stack = INUSE / SYS".
func parseHeapProfile(b []byte) (*goRuntime, error) {
	rt := &goRuntime{}
	found := 0
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line, ok := strings.CutPrefix(sc.Text(), "# ")
		if !ok {
			continue
		}
		key, val, ok := strings.Cut(line, " = ")
		if !ok {
			continue
		}
		var dst *int64
		switch key {
		case "HeapInuse":
			dst = &rt.HeapInuse
		case "HeapAlloc":
			dst = &rt.HeapAlloc
		case "Mallocs":
			dst = &rt.Mallocs
		case "Stack":
			dst = &rt.StackInuse
			val, _, _ = strings.Cut(val, " / ")
		default:
			continue
		}
		n, err := strconv.ParseInt(strings.TrimSpace(val), 10, 64)
		if err != nil {
			return nil, fmt.Errorf("heap profile: %s: %w", key, err)
		}
		*dst = n
		found++
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("heap profile: %w", err)
	}
	if found < 4 {
		return nil, errors.New("heap profile without its runtime.MemStats lines (want debug=1)")
	}
	return rt, nil
}

// parseGoroutineTotal reads "goroutine profile: total N", the first line of a text goroutine
// profile.
func parseGoroutineTotal(b []byte) (int64, error) {
	line, _, _ := bytes.Cut(b, []byte("\n"))
	rest, ok := strings.CutPrefix(string(line), "goroutine profile: total ")
	if !ok {
		return 0, fmt.Errorf("goroutine profile starts %.60q", line)
	}
	return strconv.ParseInt(strings.TrimSpace(rest), 10, 64)
}

// fsyncEvents are the system calls that make a write durable; bbolt's commit makes two
// (fdatasync on Linux: the data pages, then the meta page).
var fsyncEvents = []string{"syscalls:sys_enter_fsync", "syscalls:sys_enter_fdatasync"}

// fsyncCounter counts one process's fsync and fdatasync calls with `perf stat` on the
// kernel's system-call tracepoints: counted in the kernel, the process is not stopped.
type fsyncCounter struct {
	cmd    *exec.Cmd
	stderr bytes.Buffer
}

// startFsyncCount starts perf on pid; an error if perf is missing (then the figure is left
// out; a perf that may not trace fails at stop, with the same effect). perf attaches within
// milliseconds of its start: a window's first milliseconds may go uncounted.
func startFsyncCount(pid int) (*fsyncCounter, error) {
	perf, err := exec.LookPath("perf")
	if err != nil {
		return nil, errors.New("perf is not installed (Debian: linux-perf)")
	}
	c := &fsyncCounter{cmd: exec.Command(perf, "stat", "-x", ",", "-e", strings.Join(fsyncEvents, ","), "-p", strconv.Itoa(pid))}
	c.cmd.Stderr = &c.stderr
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := c.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start perf: %w", err)
	}
	return c, nil
}

// stop ends the count (perf prints it on SIGINT) and returns it.
func (c *fsyncCounter) stop() (int64, error) {
	_ = c.cmd.Process.Signal(syscall.SIGINT)
	done := make(chan error, 1)
	go func() { done <- c.cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = c.cmd.Process.Kill()
		<-done
		return 0, errors.New("perf stat did not stop on SIGINT")
	}
	return parsePerfCounts(c.stderr.Bytes(), fsyncEvents)
}

// parsePerfCounts sums the counts of events in `perf stat -x ,` output: one line per event,
// "COUNT,UNIT,EVENT,…"; an event perf could not count is an error.
func parsePerfCounts(out []byte, events []string) (int64, error) {
	want := map[string]bool{}
	for _, e := range events {
		want[e] = true
	}
	var sum int64
	seen := 0
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Split(line, ",")
		if len(f) < 3 || !want[f[2]] {
			continue
		}
		n, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("perf could not count %s: %q", f[2], f[0])
		}
		sum += n
		seen++
	}
	if seen != len(events) {
		return 0, fmt.Errorf("perf counted %d of %d events: %.300s", seen, len(events), out)
	}
	return sum, nil
}

// window brackets a measured phase on every process of the system under test: CPU and
// context switches from /proc, allocations from the Go runtime where the process serves its
// profiles (the gateway), fsyncs from perf where it runs.
type window struct {
	s     *sut
	at    time.Time
	proc  []procSample
	rt    []*goRuntime
	fsync []*fsyncCounter
}

// windowCounts is what one process did during a window; -1: not measured.
type windowCounts struct {
	Wall        time.Duration
	CPU         time.Duration
	CtxSwitches int64
	Fsyncs      int64
	Mallocs     int64
}

// openWindow starts counting. Figures that cannot be had (no perf, no profile endpoint) are
// left out, not an error; /proc must be readable.
func (s *sut) openWindow(ctx context.Context) (*window, error) {
	w := &window{s: s, fsync: make([]*fsyncCounter, len(s.procs))}
	for i, p := range s.procs {
		if c, err := startFsyncCount(p.pid); err == nil {
			w.fsync[i] = c
		}
	}
	w.rt = s.goRuntimes(ctx, false)
	var err error
	w.at = time.Now()
	if w.proc, err = s.sample(); err != nil {
		w.abort()
		return nil, err
	}
	return w, nil
}

// abort stops the perf processes without reading them.
func (w *window) abort() {
	for i, c := range w.fsync {
		if c != nil {
			_, _ = c.stop()
			w.fsync[i] = nil
		}
	}
}

// close ends the window: what each process did, and its /proc sample at the end.
func (w *window) close(ctx context.Context) ([]windowCounts, []procSample, error) {
	end, err := w.s.sample()
	at := time.Now()
	rt := w.s.goRuntimes(ctx, false)
	out := make([]windowCounts, len(w.s.procs))
	for i := range out {
		c := windowCounts{Wall: at.Sub(w.at), Fsyncs: -1, Mallocs: -1}
		if err == nil {
			c.CPU, c.CtxSwitches = end[i].CPU-w.proc[i].CPU, end[i].CtxSwitches-w.proc[i].CtxSwitches
		}
		if f := w.fsync[i]; f != nil {
			if n, ferr := f.stop(); ferr == nil {
				c.Fsyncs = n
			}
			w.fsync[i] = nil
		}
		if w.rt[i] != nil && rt[i] != nil {
			c.Mallocs = rt[i].Mallocs - w.rt[i].Mallocs
		}
		out[i] = c
	}
	return out, end, err
}

// goRuntimes reads the Go runtime of each process that serves the gateway's admin API (nil
// for the others, and where the endpoint is missing: an older gateway).
func (s *sut) goRuntimes(ctx context.Context, gc bool) []*goRuntime {
	out := make([]*goRuntime, len(s.procs))
	for i, p := range s.procs {
		if p.holdsGateway && s.gatewayURL != "" {
			out[i], _ = readGoRuntime(ctx, s.gatewayURL, s.token, gc)
		}
	}
	return out
}

// setPerOp fills the per-operation figures of one process from a window in which ops
// operations (messages into the twin, executed commands, connects) completed.
func (pr *ProcResult) setPerOp(c windowCounts, ops int64) {
	if ops <= 0 {
		return
	}
	per := func(n int64) *float64 {
		if n < 0 {
			return nil
		}
		v := float64(n) / float64(ops)
		return &v
	}
	pr.CtxSwitchesPerOp = per(c.CtxSwitches)
	pr.FsyncsPerOp = per(c.Fsyncs)
	pr.AllocsPerOp = per(c.Mallocs)
	pr.CPUUsPerOp = per(c.CPU.Microseconds())
}

// setIdle fills the figures of a window in which the cars were connected and quiet.
func (pr *ProcResult) setIdle(c windowCounts) {
	if c.Wall <= 0 {
		return
	}
	s := c.Wall.Seconds()
	cs, cpu := float64(c.CtxSwitches)/s, 100*c.CPU.Seconds()/s
	pr.IdleCtxSwitchesPerS, pr.IdleCPUPct = &cs, &cpu
}

// setPerCar fills the runtime's memory per connected car: the growth from base (before any
// car connected) to at (all connected), both read after a collection.
func (pr *ProcResult) setPerCar(base, at *goRuntime, cars int64) {
	if base == nil || at == nil || cars <= 0 {
		return
	}
	kb := func(a, b int64) *float64 { v := float64(b-a) / 1024 / float64(cars); return &v }
	pr.HeapKBPerCar = kb(base.HeapInuse, at.HeapInuse)
	pr.StackKBPerCar = kb(base.StackInuse, at.StackInuse)
	g := float64(at.Goroutines-base.Goroutines) / float64(cars)
	pr.GoroutinesPerCar = &g
}
