package bench

import (
	"context"
	"errors"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"

	"telematics/pkg/api"
	"telematics/pkg/phone"
)

// measure brackets a scenario's measured phase: the system under test's CPU, context
// switches, fsyncs and allocations (a window), and the load generator's CPU (this process:
// cars and phones); idle is a window before it with the cars connected and quiet.
type measure struct {
	s                  *sut
	setupStart         time.Time
	win                *window
	cpu0, cpu1         []procSample
	counts, idle       []windowCounts
	load0, load1       time.Time
	loadCPU0, loadCPU1 time.Duration
}

func (m *measure) begin(ctx context.Context) error {
	var err error
	if m.win, err = m.s.openWindow(ctx); err != nil {
		return err
	}
	m.cpu0 = m.win.proc
	m.load0, m.loadCPU0 = time.Now(), selfCPU()
	return nil
}

func (m *measure) end(ctx context.Context) error {
	var err error
	m.counts, m.cpu1, err = m.win.close(ctx)
	m.load1, m.loadCPU1 = time.Now(), selfCPU()
	return err
}

// abort stops what begin started, if end did not.
func (m *measure) abort() {
	if m.win != nil {
		m.win.abort()
	}
}

// quiet counts for d with nothing sent: the processes' idle context switches and CPU.
func (m *measure) quiet(ctx context.Context, d time.Duration) error {
	w, err := m.s.openWindow(ctx)
	if err != nil {
		return err
	}
	defer w.abort()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
	}
	m.idle, _, err = w.close(ctx)
	return err
}

func selfCPU() time.Duration {
	s, err := readProc(os.Getpid())
	if err != nil {
		return 0
	}
	return s.CPU
}

// errorCounts counts errors by reason, concurrently, and keeps the first error's text.
type errorCounts struct {
	mu    sync.Mutex
	m     map[string]int64
	first string
}

func (e *errorCounts) add(reason string) { e.addN(reason, 1) }

// addErr counts err under its reason (sendErrorReason) and keeps its text if it is the first.
func (e *errorCounts) addErr(err error) {
	e.add(sendErrorReason(err))
	e.mu.Lock()
	if e.first == "" {
		e.first = err.Error()
	}
	e.mu.Unlock()
}

func (e *errorCounts) firstError() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.first
}

func (e *errorCounts) addN(reason string, n int64) {
	e.mu.Lock()
	if e.m == nil {
		e.m = map[string]int64{}
	}
	e.m[reason] += n
	e.mu.Unlock()
}

func (e *errorCounts) snapshot() map[string]int64 {
	e.mu.Lock()
	defer e.mu.Unlock()
	if len(e.m) == 0 {
		return nil
	}
	out := make(map[string]int64, len(e.m))
	for k, v := range e.m {
		out[k] = v
	}
	return out
}

// sendErrorReason names an error that kept a phone from getting a car's answer.
func sendErrorReason(err error) string {
	switch {
	case errors.Is(err, phone.ErrNoTerminalReply):
		return "no_terminal_reply"
	case strings.HasPrefix(err.Error(), "publish request:"):
		// pkg/phone: the broker did not acknowledge the request (PUBACK) within 5 s.
		return "request_not_acknowledged"
	case errors.Is(err, phone.ErrCarUnreachable):
		return "car_unreachable"
	case errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	case errors.Is(err, context.Canceled):
		return "cancelled"
	}
	var ae *api.Error
	if errors.As(err, &ae) && ae.Reason != "" {
		return string(ae.Reason)
	}
	return "send_failed"
}

// setPercentiles fills the latency fields of res from l; what names the latency.
func setPercentiles(res *Result, what string, l *latency) {
	snap := l.snapshot()
	if snap == nil {
		return
	}
	h := hdrhistogram.Import(snap)
	ms := func(us int64) *float64 { v := float64(us) / 1000; return &v }
	res.Latency = what
	res.P50Ms, res.P90Ms, res.P99Ms = ms(h.ValueAtQuantile(50)), ms(h.ValueAtQuantile(90)), ms(h.ValueAtQuantile(99))
	res.P999Ms, res.MaxMs = ms(h.ValueAtQuantile(99.9)), ms(h.Max())
}
