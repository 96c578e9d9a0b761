// Package metrics is the gateway's Prometheus endpoint. Every decision the gateway makes is an
// audit record, so the counters are counts of audit records by kind, outcome and reason, taken
// as their transactions commit: a command accepted or refused (and why), a result, a login,
// every 2FA event (failures and lockouts included), every key change. Gauges are read from the
// running gateway at each scrape: cars online, requests in flight, whitelists not yet
// acknowledged, telemetry received and lost, the embedded broker's clients and drops.
package metrics

import (
	"net/http"
	"regexp"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"telematics/gateway/audit"
	"telematics/pkg/protocol"
)

// maxOutcomes bounds the distinct outcome labels per kind. Outcomes come from the gateway's
// own code, except a car's journal, whose status is the car's word: a car must not be able to
// make the gateway grow a time series per string it sends.
const maxOutcomes = 32

var labelShape = regexp.MustCompile(`^[a-z0-9_]{1,40}$`)

// Metrics holds the gateway's registry.
type Metrics struct {
	reg    *prometheus.Registry
	events *prometheus.CounterVec

	mu       sync.Mutex
	outcomes map[string]map[string]bool // kind -> outcomes seen
}

// New returns the metrics with the Go runtime's and the process's collectors.
func New() *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "gateway_audit_events_total",
			Help: "Audit records written, by kind (command, result, login, 2fa, keys, vehicle, admin, late_reply), outcome and reason.",
		}, []string{"kind", "outcome", "reason"}),
		outcomes: map[string]map[string]bool{},
	}
	m.reg.MustRegister(m.events, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// ObserveAudit counts one committed audit record (audit.Log.Observe).
func (m *Metrics) ObserveAudit(e audit.Event) {
	kind := e.Kind
	if !labelShape.MatchString(kind) {
		kind = "other"
	}
	reason := e.Reason
	if reason != "" && !protocol.Reason(reason).Valid() {
		reason = "other"
	}
	m.events.WithLabelValues(kind, m.outcome(kind, e.Outcome), reason).Inc()
}

func (m *Metrics) outcome(kind, outcome string) string {
	if outcome == "" {
		return ""
	}
	if !labelShape.MatchString(outcome) {
		return "other"
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	seen := m.outcomes[kind]
	if seen == nil {
		seen = map[string]bool{}
		m.outcomes[kind] = seen
	}
	if !seen[outcome] {
		if len(seen) >= maxOutcomes {
			return "other"
		}
		seen[outcome] = true
	}
	return outcome
}

// Gauge registers a gauge read from f at every scrape.
func (m *Metrics) Gauge(name, help string, f func() float64) {
	m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, f))
}

// Counter registers a counter read from f at every scrape (f must never decrease).
func (m *Metrics) Counter(name, help string, f func() float64) {
	m.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help}, f))
}

// Handler serves the registry in Prometheus' text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}
