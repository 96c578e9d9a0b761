package console_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"telematics/gateway/harness"
)

// cpuTime is this process's user + system CPU time so far.
func cpuTime(t *testing.T) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		t.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// The CPU that open consoles cost, recorded (not asserted): a gateway and a fleet of
// CONSOLE_PERF_FLEET cars reporting every second run in this process; its CPU is measured for
// a window without consoles, then with CONSOLE_PERF_STREAMS event streams open (each its own
// operator's session, read and discarded as a page would). The difference is what the consoles
// cost the gateway (the readers' share is reading bytes). Skipped unless CONSOLE_PERF_STREAMS
// is set:
//
//	CONSOLE_PERF_STREAMS=10 CONSOLE_PERF_FLEET=1000 go test ./gateway/console -run TestConsoleStreamsCPURecorded -v
func TestConsoleStreamsCPURecorded(t *testing.T) {
	streams, _ := strconv.Atoi(os.Getenv("CONSOLE_PERF_STREAMS"))
	if streams <= 0 {
		t.Skip("set CONSOLE_PERF_STREAMS (e.g. 10) to record the CPU of open consoles")
	}
	cars, _ := strconv.Atoi(os.Getenv("CONSOLE_PERF_FLEET"))
	if cars <= 0 {
		cars = 1000
	}
	window := 20 * time.Second
	ctx := context.Background()
	cloud := harness.MustStart(t, harness.Options{PasswordParams: &cheap})
	creds, err := cloud.Provision(ctx, cars)
	if err != nil {
		t.Fatal(err)
	}
	harness.MustStartFleet(t, harness.FleetOptions{BrokerURL: cloud.BrokerURL(), Creds: creds, TelemetryInterval: time.Second})
	vins := make([]string, len(creds))
	for i, c := range creds {
		vins[i] = c.VIN
	}
	if err := cloud.WaitOnline(ctx, 2*time.Minute, vins...); err != nil {
		t.Fatal(err)
	}
	clients := make([]*operatorClient, streams)
	for i := range clients {
		name := fmt.Sprintf("op%d", i)
		if _, err := cloud.Client().AddOperator(ctx, name, "viewer", opPassword); err != nil {
			t.Fatal(err)
		}
		clients[i] = consoleLogin(t, cloud.HTTPURL(), name, opPassword)
	}
	measure := func() time.Duration {
		c0, w0 := cpuTime(t), time.Now()
		time.Sleep(window) // a measurement window, not a wait for a condition
		return time.Duration(float64(cpuTime(t)-c0) / time.Since(w0).Seconds())
	}
	time.Sleep(5 * time.Second) // settle after the logins (a measurement, not a wait for a condition)
	idle := measure()

	sctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	var bytes atomic.Int64
	for _, c := range clients {
		req, _ := http.NewRequestWithContext(sctx, "GET", cloud.HTTPURL()+"/console/api/events", nil)
		res, err := c.hc.Do(req)
		if err != nil || res.StatusCode != http.StatusOK {
			t.Fatalf("stream: %v %v", err, res)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer res.Body.Close()
			buf := make([]byte, 64<<10)
			for {
				n, err := res.Body.Read(buf)
				bytes.Add(int64(n))
				if err == io.EOF || err != nil {
					return
				}
			}
		}()
	}
	time.Sleep(5 * time.Second) // the first events (the whole fleet) go out
	b0 := bytes.Load()
	watched := measure()
	rate := float64(bytes.Load()-b0) / window.Seconds() / float64(streams)
	cancel()
	wg.Wait()
	t.Logf("%d cars reporting every second; process CPU: %.1f%% of a core without consoles, %.1f%% with %d open (difference %.1f%%); %.0f bytes/s per stream",
		cars, 100*idle.Seconds(), 100*watched.Seconds(), streams, 100*(watched-idle).Seconds(), rate)
}
