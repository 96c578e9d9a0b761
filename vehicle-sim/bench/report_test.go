package bench

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

// TestTelemetryTableExplainsSentVersusTwin: "sent per s 200,399" beside "into the twin per s
// 182,723" and "lost 0" needs its reason on the page: both rates count the same window, and
// what was queued when it closed reached the twin afterwards. The table says so, with the
// count that arrived after the window and a footnote.
func TestTelemetryTableExplainsSentVersusTwin(t *testing.T) {
	cfg := Config{Scenario: ScenarioTelemetry, Rate: -1, Duration: 10 * time.Second, Rounds: 1}
	res := Result{Broker: "embedded", Cars: 1000, Connected: 1000, DurationS: 10, Sent: 2_003_990, Received: 2_003_990,
		SentPerS: 200_399, MsgsPerS: 182_723, ReceivedAfterWindow: 176_760, HostLoad: [2]float64{1, 2}}
	var b bytes.Buffer
	printTable(&b, cfg, []Result{res})
	out := b.String()
	for _, want := range []string{"sent per s (in the window)", "200399", "into the twin per s (in the window)¹", "182723",
		"into the twin after the window¹", "176,760", "into the twin in all", "lost (sent/acked − received)",
		"¹ both rates count the same window", "is not lost"} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
	// No footnote where there is no telemetry.
	b.Reset()
	printTable(&b, Config{Scenario: ScenarioConnect, Rounds: 1}, []Result{{Broker: "embedded", Cars: 10, Connected: 10}})
	if strings.Contains(b.String(), "¹") {
		t.Errorf("connect table has the telemetry footnote:\n%s", b.String())
	}
}

// With --compare --tls there are three modes: the first is compared with each other one, in
// the table and in the JSON (the second's ratios keep their plain keys).
func TestThreeModeRatios(t *testing.T) {
	cfg := Config{Scenario: ScenarioConnect, Rounds: 1, Compare: true, TLS: true, Cars: 10}
	results := []Result{
		{Broker: ModeEmbedded + tlsSuffix, Cars: 10, Connected: 10, ConnectPerS: 100},
		{Broker: ModeEmbedded, Cars: 10, Connected: 10, ConnectPerS: 400},
		{Broker: ModeMosquitto + tlsSuffix, Cars: 10, Connected: 10, ConnectPerS: 50},
	}
	rep := compareReport(cfg, results)
	if rep.Ratios["connect_per_s"] != 0.25 || rep.Ratios["connect_per_s/mosquitto+tls"] != 2 {
		t.Errorf("ratios %v", rep.Ratios)
	}
	var b bytes.Buffer
	printTable(&b, cfg, results)
	for _, want := range []string{"embedded+tls ÷ embedded", "embedded+tls ÷ mosquitto+tls", "0.25", "2.00"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, b.String())
		}
	}
}
