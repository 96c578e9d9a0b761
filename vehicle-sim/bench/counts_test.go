package bench

import (
	"os"
	"strings"
	"testing"
	"time"
)

func TestParseCtxSwitches(t *testing.T) {
	status := "Name:\tgateway\nThreads:\t9\nvoluntary_ctxt_switches:\t1200\nnonvoluntary_ctxt_switches:\t34\n"
	if got := parseCtxSwitches([]byte(status)); got != 1234 {
		t.Errorf("got %d, want 1234", got)
	}
	if got := parseCtxSwitches([]byte("Name:\tx\n")); got != 0 {
		t.Errorf("no counts: got %d", got)
	}
	// This process's threads, read for real: the test has switched at least once.
	if n := ctxSwitches(os.Getpid()); n <= 0 {
		t.Errorf("ctxSwitches(self) = %d", n)
	}
}

// The end of a text heap profile as runtime/pprof writes it (debug=1), shortened.
const heapProfileTail = `heap profile: 2: 65552 [3: 65600] @ heap/1048576
1: 65536 [1: 65536] @ 0x488b6c 0x48de07
#	0x488b6b	runtime.malg+0x2b

# runtime.MemStats
# Alloc = 1500000
# TotalAlloc = 9000000
# Sys = 20000000
# Lookups = 0
# Mallocs = 123456
# Frees = 120000
# HeapAlloc = 1500000
# HeapSys = 7000000
# HeapIdle = 4000000
# HeapInuse = 2048000
# HeapReleased = 3000000
# HeapObjects = 3456
# Stack = 819200 / 819200
# MSpan = 100000 / 130000
# NumGC = 7
`

func TestParseProfiles(t *testing.T) {
	rt, err := parseHeapProfile([]byte(heapProfileTail))
	if err != nil {
		t.Fatal(err)
	}
	want := goRuntime{HeapInuse: 2048000, HeapAlloc: 1500000, StackInuse: 819200, Mallocs: 123456}
	if *rt != want {
		t.Errorf("got %+v, want %+v", *rt, want)
	}
	if _, err := parseHeapProfile([]byte("heap profile: 2: 65552 [3: 65600] @ heap/1048576\n")); err == nil {
		t.Error("a profile without the MemStats lines (debug=0) was accepted")
	}
	if _, err := parseHeapProfile([]byte("# HeapInuse = lots\n")); err == nil {
		t.Error("a malformed number was accepted")
	}
	n, err := parseGoroutineTotal([]byte("goroutine profile: total 10042\n5000 @ 0x1 0x2\n"))
	if err != nil || n != 10042 {
		t.Errorf("goroutines: %d, %v", n, err)
	}
	if _, err := parseGoroutineTotal([]byte("<html>")); err == nil {
		t.Error("a page that is not a goroutine profile was accepted")
	}
}

func TestParsePerfCounts(t *testing.T) {
	out := "\n 0,,syscalls:sys_enter_fsync,10005000345,100.00,,\n2051,,syscalls:sys_enter_fdatasync,10005000345,100.00,,\n"
	out = strings.TrimPrefix(out, "\n ")
	if n, err := parsePerfCounts([]byte(out), fsyncEvents); err != nil || n != 2051 {
		t.Errorf("got %d, %v; want 2051", n, err)
	}
	notCounted := "<not counted>,,syscalls:sys_enter_fsync,0,0.00,,\n3,,syscalls:sys_enter_fdatasync,1,100.00,,\n"
	if _, err := parsePerfCounts([]byte(notCounted), fsyncEvents); err == nil {
		t.Error("an event perf did not count was taken as a count")
	}
	if _, err := parsePerfCounts([]byte("event syntax error: 'syscalls:sys_enter_fsync'\n"), fsyncEvents); err == nil {
		t.Error("perf's error text was taken as a count")
	}
}

func TestPerOpArithmetic(t *testing.T) {
	c := windowCounts{Wall: 10 * time.Second, CPU: 5400 * time.Millisecond, CtxSwitches: 100_000, Fsyncs: 4000, Mallocs: -1}
	var pr ProcResult
	pr.setPerOp(c, 2000) // 200 commands/s for 10 s
	for name, tc := range map[string]struct {
		got  *float64
		want float64
	}{
		"ctx switches": {pr.CtxSwitchesPerOp, 50},
		"fsyncs":       {pr.FsyncsPerOp, 2},
		"CPU µs":       {pr.CPUUsPerOp, 2700},
	} {
		if tc.got == nil || *tc.got != tc.want {
			t.Errorf("%s per op: got %v, want %g", name, tc.got, tc.want)
		}
	}
	if pr.AllocsPerOp != nil {
		t.Errorf("allocations not measured, yet %v per op", *pr.AllocsPerOp)
	}
	var none ProcResult
	none.setPerOp(c, 0)
	if none.CtxSwitchesPerOp != nil || none.CPUUsPerOp != nil {
		t.Error("figures per operation without any operation")
	}

	pr.setIdle(windowCounts{Wall: 2 * time.Second, CPU: 40 * time.Millisecond, CtxSwitches: 130})
	if *pr.IdleCtxSwitchesPerS != 65 || *pr.IdleCPUPct != 2 {
		t.Errorf("idle: %g switches/s, %g%% CPU; want 65, 2", *pr.IdleCtxSwitchesPerS, *pr.IdleCPUPct)
	}

	base := &goRuntime{HeapInuse: 10 << 20, StackInuse: 1 << 20, Goroutines: 40}
	at := &goRuntime{HeapInuse: 10<<20 + 1000*16*1024, StackInuse: 1<<20 + 1000*8*1024, Goroutines: 2040}
	pr.setPerCar(base, at, 1000)
	if *pr.HeapKBPerCar != 16 || *pr.StackKBPerCar != 8 || *pr.GoroutinesPerCar != 2 {
		t.Errorf("per car: heap %g KB, stacks %g KB, %g goroutines; want 16, 8, 2", *pr.HeapKBPerCar, *pr.StackKBPerCar, *pr.GoroutinesPerCar)
	}
	var older ProcResult
	older.setPerCar(nil, at, 1000) // a gateway without the profile endpoint
	if older.HeapKBPerCar != nil {
		t.Error("per-car heap without a base reading")
	}

	two := func(v float64) *float64 { return &v }
	r := Result{Processes: []ProcResult{{CtxSwitchesPerOp: two(40)}, {CtxSwitchesPerOp: two(12)}}}
	if sum, ok := sumProcs(r, func(p ProcResult) *float64 { return p.CtxSwitchesPerOp }); !ok || sum != 52 {
		t.Errorf("sum over processes: %g, %v", sum, ok)
	}
	if _, ok := sumProcs(r, func(p ProcResult) *float64 { return p.FsyncsPerOp }); ok {
		t.Error("a sum of counts no process measured")
	}
}
