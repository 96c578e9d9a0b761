package bench

import (
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
)

// row is one line of the table: a label and how to show a result's value (ok false: not
// measured). num, when set, is the value the compare ratio is taken of.
type row struct {
	label string
	show  func(Result) (string, bool)
	num   func(Result) (float64, bool)
}

func intRow(label string, f func(Result) int64) row {
	return row{label: label,
		show: func(r Result) (string, bool) { return group(f(r)), true },
		num:  func(r Result) (float64, bool) { return float64(f(r)), true }}
}

func floatRow(label, format string, f func(Result) (float64, bool)) row {
	return row{label: label,
		show: func(r Result) (string, bool) {
			v, ok := f(r)
			if !ok {
				return "", false
			}
			return fmt.Sprintf(format, v), true
		},
		num: f}
}

func ptr(p *float64) (float64, bool) {
	if p == nil {
		return 0, false
	}
	return *p, true
}

// rows lists the table's lines for the scenario.
func rows(cfg Config, results []Result) []row {
	if keyScenario(cfg.Scenario) {
		return append(keyRows(cfg), procRows(cfg, results)...)
	}
	out := []row{
		{label: "cars", show: func(r Result) (string, bool) { return group(int64(r.Cars)), true }},
		{label: "load processes", show: func(r Result) (string, bool) { return fmt.Sprint(r.LoadProcs), true }},
		intRow("connected", func(r Result) int64 { return r.Connected }),
		intRow("connect failed", func(r Result) int64 { return r.ConnectFailed }),
		intRow("refused (CONNACK)", func(r Result) int64 { return r.Refused }),
		floatRow("time until connected (s)", "%.2f", func(r Result) (float64, bool) { return r.ConnectS, true }),
		floatRow("connect rate (cars/s)", "%.0f", func(r Result) (float64, bool) { return r.ConnectPerS, true }),
	}
	latency := "connect latency"
	if cfg.Scenario == ScenarioTelemetry {
		latency = "PUBACK latency"
	}
	out = append(out,
		floatRow(latency+" p50 (ms)", "%.2f", func(r Result) (float64, bool) { return ptr(r.P50Ms) }),
		floatRow(latency+" p99 (ms)", "%.2f", func(r Result) (float64, bool) { return ptr(r.P99Ms) }),
		floatRow(latency+" max (ms)", "%.2f", func(r Result) (float64, bool) { return ptr(r.MaxMs) }),
		floatRow("broker KB per connected car", "%.1f", func(r Result) (float64, bool) { return ptr(r.BrokerKBPerCar) }),
		floatRow("broker KB per added car (slope)", "%.1f", func(r Result) (float64, bool) { return ptr(r.BrokerSlopeKBPerCar) }),
		floatRow("gateway KB per connected car", "%.1f", func(r Result) (float64, bool) { return ptr(r.GatewayKBPerCar) }),
		floatRow("gateway KB per added car (slope)", "%.1f", func(r Result) (float64, bool) { return ptr(r.GatewaySlopeKBPerCar) }),
		floatRow("broker KB per car at end (after telemetry)", "%.1f", func(r Result) (float64, bool) { return ptr(r.BrokerKBPerCarEnd) }),
		floatRow("gateway KB per car at end (after telemetry)", "%.1f", func(r Result) (float64, bool) { return ptr(r.GatewayKBPerCarEnd) }),
	)
	if telemetryRows(cfg) {
		out = append(out,
			row{label: "telemetry rate per car, QoS", show: func(r Result) (string, bool) {
				rate := "max"
				if r.RatePerCar > 0 {
					rate = fmt.Sprintf("%g/s", r.RatePerCar)
				}
				return fmt.Sprintf("%s, QoS %d", rate, r.QoS), true
			}},
			floatRow("publishing window (s)", "%.1f", func(r Result) (float64, bool) { return r.DurationS, true }),
			intRow("sent", func(r Result) int64 { return r.Sent }),
			floatRow("sent per s (in the window)", "%.0f", func(r Result) (float64, bool) { return r.SentPerS, true }),
			floatRow("into the twin per s (in the window)¹", "%.0f", func(r Result) (float64, bool) { return r.MsgsPerS, true }),
			intRow("into the twin after the window¹", func(r Result) int64 { return r.ReceivedAfterWindow }),
			intRow("into the twin in all", func(r Result) int64 { return r.Received }),
			intRow("lost (sent/acked − received)", func(r Result) int64 { return r.Lost }),
			intRow("lost (gateway's sequence gaps)", func(r Result) int64 { return r.GatewayLost }),
		)
	}
	return append(out, procRows(cfg, results)...)
}

// telemetryRows reports whether the table has the telemetry lines (a run that published).
func telemetryRows(cfg Config) bool {
	return cfg.Rate != 0 && cfg.Duration > 0 && !keyScenario(cfg.Scenario)
}

// procRows are the lines of the processes' memory and CPU, the load generator's CPU, the
// errors and the host's load.
func procRows(cfg Config, results []Result) []row {
	var out []row
	// One line per process role seen in any run.
	var roles []string
	seen := map[string]bool{}
	for _, res := range results {
		for _, p := range res.Processes {
			if !seen[p.Role] {
				seen[p.Role] = true
				roles = append(roles, p.Role)
			}
		}
	}
	for _, role := range roles {
		find := func(r Result) (ProcResult, bool) {
			for _, p := range r.Processes {
				if p.Role == role {
					return p, true
				}
			}
			return ProcResult{}, false
		}
		out = append(out,
			floatRow(role+" RSS at end (MB)", "%.1f", func(r Result) (float64, bool) {
				p, ok := find(r)
				return float64(p.RSSKB) / 1024, ok
			}),
			floatRow(role+" CPU (% of a core)", "%.0f", func(r Result) (float64, bool) {
				p, ok := find(r)
				return p.CPUPct, ok
			}),
		)
		if cfg.Rate != 0 && cfg.Duration > 0 && !keyScenario(cfg.Scenario) {
			out = append(out, floatRow(role+" CPU per message (µs)", "%.1f", func(r Result) (float64, bool) {
				p, ok := find(r)
				if !ok || p.CPUUsPerMsg == nil {
					return 0, false
				}
				return *p.CPUUsPerMsg, true
			}))
		}
		for _, c := range countFields(cfg) {
			out = append(out, floatRow(role+" "+c.label, c.format, func(r Result) (float64, bool) {
				p, ok := find(r)
				if !ok {
					return 0, false
				}
				return ptr(c.get(p))
			}))
		}
	}
	// The same counts over all processes of the system under test (gateway and broker), so
	// that --compare sets one figure beside the other.
	for _, c := range countFields(cfg) {
		if c.perCar {
			continue
		}
		out = append(out, floatRow("all processes: "+c.label, c.format, func(r Result) (float64, bool) {
			return sumProcs(r, c.get)
		}))
	}
	out = append(out,
		floatRow("load generator CPU (% of a core)", "%.0f", func(r Result) (float64, bool) { return r.LoaderCPUPct, true }),
		intRow("errors", func(r Result) int64 { return r.Errors }),
		row{label: "errors by reason", show: func(r Result) (string, bool) {
			if len(r.ErrorsByReason) == 0 {
				return "", false
			}
			var parts []string
			for _, k := range sortedKeys(r.ErrorsByReason) {
				parts = append(parts, fmt.Sprintf("%s %d", k, r.ErrorsByReason[k]))
			}
			return strings.Join(parts, ", "), true
		}},
		row{label: "host load average (start → end)", show: func(r Result) (string, bool) {
			return fmt.Sprintf("%.1f → %.1f", r.HostLoad[0], r.HostLoad[1]), true
		}},
	)
	return out
}

// countField is one of a process's counts, as the table shows it.
type countField struct {
	label, format string
	perCar        bool
	get           func(ProcResult) *float64
}

// countFields are the per-operation, idle and per-car counts of the scenario's processes.
func countFields(cfg Config) []countField {
	op := opUnit(cfg)
	return []countField{
		{label: "context switches per " + op, format: "%.1f", get: func(p ProcResult) *float64 { return p.CtxSwitchesPerOp }},
		{label: "fsyncs per " + op, format: "%.2f", get: func(p ProcResult) *float64 { return p.FsyncsPerOp }},
		{label: "CPU per " + op + " (µs)", format: "%.1f", get: func(p ProcResult) *float64 { return p.CPUUsPerOp }},
		{label: "allocations per " + op, format: "%.0f", get: func(p ProcResult) *float64 { return p.AllocsPerOp }},
		{label: "context switches per s at rest", format: "%.0f", get: func(p ProcResult) *float64 { return p.IdleCtxSwitchesPerS }},
		{label: "CPU at rest (% of a core)", format: "%.1f", get: func(p ProcResult) *float64 { return p.IdleCPUPct }},
		{label: "Go heap KB per car", format: "%.1f", perCar: true, get: func(p ProcResult) *float64 { return p.HeapKBPerCar }},
		{label: "goroutine stacks KB per car", format: "%.1f", perCar: true, get: func(p ProcResult) *float64 { return p.StackKBPerCar }},
		{label: "goroutines per car", format: "%.2f", perCar: true, get: func(p ProcResult) *float64 { return p.GoroutinesPerCar }},
	}
}

// opUnit names what the per-operation counts of the scenario count.
func opUnit(cfg Config) string {
	switch {
	case cfg.Scenario == ScenarioRevoke:
		return "revocation"
	case keyScenario(cfg.Scenario):
		return "command"
	case cfg.Rate != 0 && cfg.Duration > 0:
		return "message"
	}
	return "connect"
}

// sumProcs adds a count over the run's processes; not measured if any process lacks it.
func sumProcs(r Result, get func(ProcResult) *float64) (float64, bool) {
	var sum float64
	for _, p := range r.Processes {
		v := get(p)
		if v == nil {
			return 0, false
		}
		sum += *v
	}
	return sum, len(r.Processes) > 0
}

// keyRows are the lines of the digital-key scenarios.
func keyRows(cfg Config) []row {
	key := func(f func(*KeyResult) (float64, bool)) func(Result) (float64, bool) {
		return func(r Result) (float64, bool) {
			if r.KeyResult == nil {
				return 0, false
			}
			return f(r.KeyResult)
		}
	}
	keyInt := func(label string, f func(*KeyResult) int64) row {
		return row{label: label,
			show: func(r Result) (string, bool) {
				if r.KeyResult == nil {
					return "", false
				}
				return group(f(r.KeyResult)), true
			},
			num: key(func(k *KeyResult) (float64, bool) { return float64(f(k)), true })}
	}
	out := []row{
		{label: "cars (each with an owner)", show: func(r Result) (string, bool) { return group(int64(r.Cars)), true }},
	}
	if cfg.Owners > 0 {
		// --owners: the cars are spread over fewer owners (one phone key and, for commands,
		// one app session each).
		out[0].label = "cars (spread over the owners)"
		out = append(out, keyInt("owners", func(k *KeyResult) int64 { return int64(k.Owners) }))
	}
	out = append(out,
		intRow("cars online", func(r Result) int64 { return r.Connected }),
		floatRow("setup, not measured (s)", "%.1f", key(func(k *KeyResult) (float64, bool) { return k.SetupS, true })),
	)
	latency := "latency"
	switch cfg.Scenario {
	case ScenarioCommands, ScenarioLocal:
		latency = "send → executed"
		if cfg.Scenario == ScenarioLocal {
			latency = "challenge + command → executed"
		}
		out = append(out,
			floatRow("rate requested (commands/s)", "%g", key(func(k *KeyResult) (float64, bool) { return k.RateTarget, true })),
			row{label: "actions (each car cycles)", show: func(r Result) (string, bool) {
				if r.KeyResult == nil {
					return "", false
				}
				return strings.Join(r.Actions, ","), true
			}},
			floatRow("window (s)", "%.1f", func(r Result) (float64, bool) { return r.DurationS, true }),
			keyInt("commands sent", func(k *KeyResult) int64 { return k.Commands }),
			floatRow("sent per s", "%.0f", key(func(k *KeyResult) (float64, bool) { return k.CommandsPerS, true })),
		)
		if cfg.Scenario == ScenarioCommands {
			out = append(out,
				keyInt("TOTP step-ups before the window", func(k *KeyResult) int64 { return int64(k.StepUps) }),
				keyInt("accepted (each audited before it went out)", func(k *KeyResult) int64 { return k.Accepted }))
		}
		out = append(out,
			keyInt("executed", func(k *KeyResult) int64 { return k.Executed }),
			floatRow("executed per s", "%.0f", key(func(k *KeyResult) (float64, bool) { return k.ExecutedPerS, true })),
			floatRow("bench's dispatch lag p99 (ms)", "%.2f", key(func(k *KeyResult) (float64, bool) { return ptr(k.DispatchLagP99Ms) })),
		)
	case ScenarioRevoke:
		latency = "revoke → car's ack"
		out = append(out,
			keyInt("revocations answered", func(k *KeyResult) int64 { return int64(k.Revoked) }),
			keyInt("cars that acknowledged", func(k *KeyResult) int64 { return int64(k.AckedCars) }),
			floatRow("first revoke → last car's ack (s)", "%.3f", func(r Result) (float64, bool) { return r.DurationS, true }),
			floatRow("first revoke → last answer (s)", "%.3f", key(func(k *KeyResult) (float64, bool) { return k.RevokeAnsweredS, true })),
			floatRow("revoke request p50 (ms)", "%.2f", key(func(k *KeyResult) (float64, bool) { return ptr(k.RevokeRequestP50Ms) })),
			floatRow("revoke request p99 (ms)", "%.2f", key(func(k *KeyResult) (float64, bool) { return ptr(k.RevokeRequestP99Ms) })),
		)
	}
	out = append(out,
		floatRow(latency+" p50 (ms)", "%.2f", func(r Result) (float64, bool) { return ptr(r.P50Ms) }),
		floatRow(latency+" p90 (ms)", "%.2f", func(r Result) (float64, bool) { return ptr(r.P90Ms) }),
		floatRow(latency+" p99 (ms)", "%.2f", func(r Result) (float64, bool) { return ptr(r.P99Ms) }),
		floatRow(latency+" p99.9 (ms)", "%.2f", func(r Result) (float64, bool) { return ptr(r.P999Ms) }),
		floatRow(latency+" max (ms)", "%.2f", func(r Result) (float64, bool) { return ptr(r.MaxMs) }),
	)
	if cfg.Scenario == ScenarioLocal {
		out = append(out,
			floatRow("a challenge alone, probed p50 (ms)", "%.2f", key(func(k *KeyResult) (float64, bool) { return ptr(k.ChallengeP50Ms) })),
			floatRow("a challenge alone, probed p99 (ms)", "%.2f", key(func(k *KeyResult) (float64, bool) { return ptr(k.ChallengeP99Ms) })))
	}
	if cfg.Scenario == ScenarioCommands {
		for i, name := range segmentNames {
			out = append(out, row{label: name + " mean / p50 / p99 (ms)", show: func(r Result) (string, bool) {
				if r.KeyResult == nil || len(r.Split) <= i {
					return "", false
				}
				s := r.Split[i]
				return fmt.Sprintf("%.2f / %.1f / %.1f", s.MeanMs, s.P50Ms, s.P99Ms), true
			}, num: key(func(k *KeyResult) (float64, bool) {
				if len(k.Split) <= i {
					return 0, false
				}
				return k.Split[i].MeanMs, true
			})})
		}
	}
	return out
}

// printTable prints one column per run, and with --compare the ratio of the modes' means.
func printTable(w io.Writer, cfg Config, results []Result) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	header := []string{"scenario " + cfg.Scenario}
	for _, r := range results {
		h := r.Broker
		if cfg.Rounds > 1 {
			h += fmt.Sprintf(" #%d", r.Round)
		}
		header = append(header, h)
	}
	modes := modeOrder(results)
	compare := len(modes) >= 2
	if compare {
		for _, m := range modes[1:] {
			header = append(header, modes[0]+" ÷ "+m)
		}
	}
	all := rows(cfg, results)
	// Labels left-aligned (padded to one width), figures right-aligned.
	width := len([]rune(header[0]))
	for _, rw := range all {
		width = max(width, len([]rune(rw.label)))
	}
	pad := func(s string) string { return s + strings.Repeat(" ", width-len([]rune(s))) }
	header[0] = pad(header[0])
	fmt.Fprintln(tw, strings.Join(header, "\t")+"\t")
	for _, rw := range all {
		cells := []string{pad(rw.label)}
		any := false
		for _, r := range results {
			v, ok := rw.show(r)
			if !ok {
				v = "–"
			} else {
				any = true
			}
			cells = append(cells, v)
		}
		if !any {
			continue
		}
		if compare {
			for _, m := range modes[1:] {
				cells = append(cells, ratioCell(rw, results, modes[0], m))
			}
		}
		fmt.Fprintln(tw, strings.Join(cells, "\t")+"\t")
	}
	tw.Flush()
	if telemetryRows(cfg) {
		fmt.Fprintln(w, "¹ both rates count the same window. What was still queued (broker, gateway workers) when it closed")
		fmt.Fprintln(w, "  reached the twin while the bench waited afterwards: it lowers the twin's rate but is not lost.")
		fmt.Fprintln(w, "  \"lost\" counts what never arrived; the twin counts every message, not one per car.")
	}
	for _, r := range results {
		if r.FirstError != "" {
			fmt.Fprintf(w, "%s: first error: %s\n", r.Broker, r.FirstError)
		}
	}
}

func ratioCell(rw row, results []Result, first, other string) string {
	if rw.num == nil {
		return ""
	}
	a, okA := meanOf(rw, results, first)
	b, okB := meanOf(rw, results, other)
	if !okA || !okB || b == 0 {
		return ""
	}
	return fmt.Sprintf("%.2f", a/b)
}

func meanOf(rw row, results []Result, mode string) (float64, bool) {
	var sum float64
	n := 0
	for _, r := range results {
		if r.Broker != mode {
			continue
		}
		if v, ok := rw.num(r); ok {
			sum += v
			n++
		}
	}
	if n == 0 {
		return 0, false
	}
	return sum / float64(n), true
}

func modeOrder(results []Result) []string {
	var modes []string
	seen := map[string]bool{}
	for _, r := range results {
		if !seen[r.Broker] {
			seen[r.Broker] = true
			modes = append(modes, r.Broker)
		}
	}
	return modes
}

// CompareReport is the JSON of several runs: the runs, and with two broker modes the ratios
// of their means (first mode ÷ second); with more (--compare --tls), the ratios of the first
// to each further mode are keyed "KEY/MODE".
type CompareReport struct {
	Scenario  string             `json:"scenario"`
	Cars      int                `json:"cars"`
	DurationS float64            `json:"duration_s"` // mean over the runs
	Modes     []string           `json:"modes"`
	Runs      []Result           `json:"runs"`
	Ratios    map[string]float64 `json:"ratios,omitempty"`
}

func compareReport(cfg Config, results []Result) CompareReport {
	rep := CompareReport{Scenario: cfg.Scenario, Cars: cfg.Cars, Modes: modeOrder(results), Runs: results}
	for _, r := range results {
		rep.DurationS += r.DurationS / float64(len(results))
	}
	if len(rep.Modes) >= 2 {
		rep.Ratios = map[string]float64{}
		keys := map[string]func(Result) (float64, bool){
			"connect_per_s":         func(r Result) (float64, bool) { return r.ConnectPerS, true },
			"msgs_per_s":            func(r Result) (float64, bool) { return r.MsgsPerS, true },
			"broker_kb_per_car":     func(r Result) (float64, bool) { return ptr(r.BrokerKBPerCar) },
			"broker_kb_per_car_end": func(r Result) (float64, bool) { return ptr(r.BrokerKBPerCarEnd) },
			"p99_ms":                func(r Result) (float64, bool) { return ptr(r.P99Ms) },
			"ctx_switches_per_op": func(r Result) (float64, bool) {
				return sumProcs(r, func(p ProcResult) *float64 { return p.CtxSwitchesPerOp })
			},
			"cpu_us_per_op": func(r Result) (float64, bool) {
				return sumProcs(r, func(p ProcResult) *float64 { return p.CPUUsPerOp })
			},
			"idle_ctx_switches_per_s": func(r Result) (float64, bool) {
				return sumProcs(r, func(p ProcResult) *float64 { return p.IdleCtxSwitchesPerS })
			},
		}
		for i, m := range rep.Modes[1:] {
			for k, f := range keys {
				rw := row{num: f}
				a, okA := meanOf(rw, results, rep.Modes[0])
				b, okB := meanOf(rw, results, m)
				if i > 0 {
					k += "/" + m
				}
				if okA && okB && b != 0 {
					rep.Ratios[k] = a / b
				}
			}
		}
	}
	return rep
}

// group writes an integer with thousands separators.
func group(n int64) string {
	s := fmt.Sprint(n)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}

// sortedKeys lists a map's keys in order.
func sortedKeys(m map[string]int64) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
