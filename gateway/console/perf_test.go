package console_test

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"telematics/gateway/harness"
	"telematics/gateway/store"
	"telematics/pkg/protocol"
)

// The fleet view's page load with a large fleet, recorded (not asserted): the store is seeded
// directly with CONSOLE_PERF_CARS vehicles and their twins (store APIs, no MQTT), the gateway
// starts on it, and Chromium's performance timing of a reload of the fleet page is logged and
// written to $ARTIFACTS/console/perf.json. Skipped unless CONSOLE_PERF_CARS is set:
//
//	CONSOLE_PERF_CARS=20000 go test ./gateway/console -run TestFleetPageLoadRecorded -v
func TestFleetPageLoadRecorded(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("CONSOLE_PERF_CARS"))
	if n <= 0 {
		t.Skip("set CONSOLE_PERF_CARS (e.g. 20000) to record the fleet page's load")
	}
	chromium(t)
	ctx := context.Background()
	cloud := harness.MustStart(t, harness.Options{PasswordParams: &cheap})
	if _, err := cloud.Client().AddOperator(ctx, "olga", "admin", opPassword); err != nil {
		t.Fatal(err)
	}
	seedFleet(t, cloud, n)

	p := newPage(t, cloud.HTTPURL())
	p.enroll("olga")
	all := fmt.Sprintf(`(document.querySelector('#count')?.textContent ?? '').includes('of %d cars')`, n)
	p.until("every car counted", all)
	// A reload of the fleet page: the session cookie stays, the page loads, checks its session,
	// opens the event stream and draws the list and the map from its first event.
	p.do("reload", chromedp.Reload())
	p.until("every car counted after the reload", all)
	var m map[string]float64
	p.do("read the timing", chromedp.Evaluate[chromedp.Void](`window.__m = (() => {
		const nav = performance.getEntriesByType('navigation')[0];
		const fcp = performance.getEntriesByName('first-contentful-paint')[0];
		const mark = (name) => { const m = performance.getEntriesByName(name)[0]; return m ? m.startTime : -1; };
		return {fcp_ms: fcp ? fcp.startTime : -1, dom_interactive_ms: nav.domInteractive, dom_content_loaded_ms: nav.domContentLoadedEventEnd,
			load_ms: nav.loadEventEnd, fleet_drawn_ms: performance.now(),
			first_rows_ms: mark('console:fleet-first-part'), fleet_complete_ms: mark('console:fleet-complete'),
			dom_rows: document.querySelectorAll('#fleet-rows tr').length, markers: document.querySelectorAll('#map path.leaflet-interactive').length};
	})()`))
	if _, err := chromedp.Run(p.ctx, chromedp.Poll[map[string]float64](`window.__m`, chromedp.WithPollingTimeout(pageWait))); err != nil {
		t.Fatal(err)
	}
	v, err := chromedp.Run(p.ctx, chromedp.Evaluate[map[string]float64](`window.__m`))
	if err != nil {
		t.Fatal(err)
	}
	m = v
	p.screenshot(fmt.Sprintf("fleet-%d", n))
	m["cars"] = float64(n)
	b, _ := json.MarshalIndent(m, "", " ")
	t.Logf("fleet page with %d cars: %s", n, b)
	_ = os.WriteFile(filepath.Join(p.shot, "perf.json"), b, 0o644)
}

// seedFleet stops cloud's gateway, writes n cars and their twins straight into its store (90%
// online, positions across Europe; VINs PERF0000000000000 on) and starts it again.
func seedFleet(t *testing.T, cloud *harness.Cloud, n int) {
	t.Helper()
	ctx := context.Background()
	if err := cloud.Down(); err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(filepath.Join(cloud.Dir, "gateway.db"))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().UnixMilli()
	vs := make([]store.Vehicle, n)
	tws := make([]store.Twin, n)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range vs {
		vin := fmt.Sprintf("PERF%013d", i)
		if !protocol.ValidVIN(vin) {
			t.Fatalf("%s is not a VIN", vin)
		}
		vs[i] = store.Vehicle{VIN: vin, CreatedMs: now}
		status := protocol.StatusOnline
		if i%10 == 0 {
			status = protocol.StatusOffline
		}
		tws[i] = store.Twin{VIN: vin, Status: status, StatusMs: now, TelemetryMs: now, Signals: map[string]any{
			protocol.VSSLatitude: 36 + rng.Float64()*24, protocol.VSSLongitude: -9 + rng.Float64()*35,
			protocol.VSSIsLocked: i%3 != 0, protocol.VSSSoC: rng.Float64() * 100, protocol.VSSSpeed: rng.Float64() * 130}}
	}
	if err := st.AddVehicles(vs); err != nil {
		t.Fatal(err)
	}
	if err := st.PutTwins(tws); err != nil {
		t.Fatal(err)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	if err := cloud.Up(ctx); err != nil {
		t.Fatal(err)
	}
}
