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

// In --compare the counts of each process stand beside the other mode's, and their sum over
// the processes of each system under test gets a ratio.
func TestCountsBesideMosquitto(t *testing.T) {
	f := func(v float64) *float64 { return &v }
	cfg := Config{Scenario: ScenarioCommands, Rate: 200, Duration: 10 * time.Second, Rounds: 1}
	emb := Result{Broker: ModeEmbedded, KeyResult: &KeyResult{}, OpUnit: "command", Processes: []ProcResult{
		{Role: "gateway+broker", CtxSwitchesPerOp: f(50), FsyncsPerOp: f(6), CPUUsPerOp: f(2700), IdleCtxSwitchesPerS: f(65)}}}
	mosq := Result{Broker: ModeMosquitto, KeyResult: &KeyResult{}, OpUnit: "command", Processes: []ProcResult{
		{Role: "mosquitto", CtxSwitchesPerOp: f(10), FsyncsPerOp: f(0), CPUUsPerOp: f(300), IdleCtxSwitchesPerS: f(1)},
		{Role: "gateway", CtxSwitchesPerOp: f(15), FsyncsPerOp: f(4), CPUUsPerOp: f(1200), IdleCtxSwitchesPerS: f(9)}}}
	var b bytes.Buffer
	printTable(&b, cfg, []Result{emb, mosq})
	out := b.String()
	lineOf := func(label string) string {
		for _, l := range strings.Split(out, "\n") {
			if l = strings.TrimSpace(l); strings.HasPrefix(l, label) {
				return l
			}
		}
		t.Fatalf("no line %q in:\n%s", label, out)
		return ""
	}
	for label, want := range map[string][]string{
		"gateway+broker context switches per command":   {"50.0", "–"},
		"mosquitto context switches per command":        {"–", "10.0"},
		"all processes: context switches per command":   {"50.0", "25.0", "2.00"},
		"all processes: fsyncs per command":             {"6.00", "4.00", "1.50"},
		"all processes: CPU per command (µs)":           {"2700.0", "1500.0", "1.80"},
		"all processes: context switches per s at rest": {"65", "10", "6.50"},
	} {
		fields := strings.Fields(strings.TrimPrefix(lineOf(label), label))
		if strings.Join(fields, " ") != strings.Join(want, " ") {
			t.Errorf("%s: %v, want %v", label, fields, want)
		}
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
