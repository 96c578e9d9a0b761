package bench

import (
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"telematics/pkg/cmdline"
	"telematics/pkg/protocol"
)

// Phases of a failover drill, by when a request was sent: before the kill, while the replica
// was gone (from the kill until it answered /readyz again), after it came back.
var phaseNames = []string{"before", "during", "after"}

// PhaseStats are the requests sent in one phase and the time to their first terminal reply.
type PhaseStats struct {
	Phase    string  `json:"phase"`
	Requests int     `json:"requests"`
	Answered int     `json:"answered"` // with at least one terminal reply
	Executed int     `json:"executed"` // whose first terminal reply was executed
	P50Ms    float64 `json:"p50_ms"`
	P99Ms    float64 `json:"p99_ms"`
	MaxMs    float64 `json:"max_ms"`
}

// WriteCheck is an acknowledged write made before the kill and looked for afterwards.
type WriteCheck struct {
	What string `json:"what"` // e.g. "key K of VIN"
	// MissingOn names the replicas whose answer did not hold it ("" when every one did).
	MissingOn []string `json:"missing_on,omitempty"`
}

// FailoverReport is what `vehicle-sim drill failover` found.
type FailoverReport struct {
	OK       bool     `json:"ok"`
	Replicas int      `json:"replicas"`
	Store    string   `json:"store"`
	Etcd     string   `json:"etcd,omitempty"` // binary or embedded
	Cars     int      `json:"cars"`
	Rate     float64  `json:"rate"` // requests per second asked for
	Actions  []string `json:"actions"`
	// Victim is the replica killed (SIGKILL) KillAtMs after the load began and started again
	// RestartAtMs after it; BackAtMs is when it answered /readyz again.
	Victim      string `json:"victim"`
	KillAtMs    int64  `json:"kill_at_ms"`
	RestartAtMs int64  `json:"restart_at_ms"`
	BackAtMs    int64  `json:"back_at_ms"`

	Requests int `json:"requests"`
	// NotPublished: the broker did not take the request (the drill's broker stays up, so any
	// is a problem of the drill's own side).
	NotPublished int `json:"not_published"`
	// Answered: exactly one terminal reply; Duplicates: more than one; Unanswered: none by the
	// request's expiry plus the grace.
	Answered   int            `json:"answered"`
	Duplicates int            `json:"duplicates"`
	Unanswered int            `json:"unanswered"`
	ByStatus   map[string]int `json:"by_status"` // first terminal replies: executed, rejected:REASON, expired, failed:REASON
	// The cars' own counts: executions of the drill's requests (one per request at most),
	// ExecutedTwice the requests a car executed more than once, Redelivered the commands a car
	// was handed again after executing them (and refused as duplicate).
	Executions    int `json:"executions"`
	ExecutedTwice int `json:"executed_twice"`
	Redelivered   int `json:"redelivered"`
	// Mismatched: a car executed the request and its terminal reply said otherwise, or the
	// reply said executed and no car executed it.
	Mismatched int `json:"mismatched"`
	// PendingAtKill is how many requests awaited their terminal reply at the kill;
	// PendingAnsweredMs the time from the kill until the last of them had one (-1: some never did).
	PendingAtKill     int   `json:"pending_at_kill"`
	PendingAnsweredMs int64 `json:"pending_answered_ms"`

	Phases []PhaseStats `json:"phases"`

	WritesAcknowledged int          `json:"writes_acknowledged"`
	WritesLost         int          `json:"writes_lost"`
	Lost               []WriteCheck `json:"lost,omitempty"`

	StrayReplies int      `json:"stray_replies,omitempty"`
	Problems     []string `json:"problems,omitempty"`
	DurationMs   int64    `json:"duration_ms"`
}

// failoverTimes are the moments of a drill's load.
type failoverTimes struct {
	start, kill, restart, back time.Time
}

// phaseOf is the phase of a request sent at t.
func (ft failoverTimes) phaseOf(t time.Time) int {
	switch {
	case !ft.kill.IsZero() && t.Before(ft.kill):
		return 0
	case ft.kill.IsZero():
		return 0
	case ft.back.IsZero() || t.Before(ft.back):
		return 1
	default:
		return 2
	}
}

// computeFailover fills the counts and the verdict of rep from the requests and their
// replies, the cars' execution counts ("VIN/ID" → times), and the write checks.
func computeFailover(rep *FailoverReport, reqs []sentRequest, execs map[string]int, redelivered int, ft failoverTimes, writes []WriteCheck) {
	rep.Requests = len(reqs)
	rep.ByStatus = map[string]int{}
	lat := make([][]time.Duration, len(phaseNames))
	rep.Phases = make([]PhaseStats, len(phaseNames))
	for i, n := range phaseNames {
		rep.Phases[i].Phase = n
	}
	if !ft.kill.IsZero() {
		rep.KillAtMs = ft.kill.Sub(ft.start).Milliseconds()
	}
	if !ft.restart.IsZero() {
		rep.RestartAtMs = ft.restart.Sub(ft.start).Milliseconds()
	}
	if !ft.back.IsZero() {
		rep.BackAtMs = ft.back.Sub(ft.start).Milliseconds()
	}
	var pendingLast time.Time
	pendingOpen := false
	ours := map[string]bool{}
	for i := range reqs {
		r := &reqs[i]
		key := r.VIN + "/" + r.ID
		ours[key] = true
		ph := &rep.Phases[ft.phaseOf(r.SentAt)]
		ph.Requests++
		n := execs[key]
		rep.Executions += n
		if n > 1 {
			rep.ExecutedTwice++
		}
		if r.PublishErr != nil {
			rep.NotPublished++
			continue
		}
		status, at, ok := r.firstTerminal()
		switch {
		case len(r.Terminals) == 0:
			rep.Unanswered++
		case len(r.Terminals) == 1:
			rep.Answered++
		default:
			rep.Duplicates++
		}
		if !ft.kill.IsZero() && r.SentAt.Before(ft.kill) && (!ok || at.After(ft.kill)) {
			rep.PendingAtKill++
			if !ok {
				pendingOpen = true
			} else if at.After(pendingLast) {
				pendingLast = at
			}
		}
		if !ok {
			continue
		}
		rep.ByStatus[status]++
		ph.Answered++
		lat[ft.phaseOf(r.SentAt)] = append(lat[ft.phaseOf(r.SentAt)], at.Sub(r.SentAt))
		executed := status == protocol.ReplyExecuted
		if executed {
			ph.Executed++
		}
		if executed != (n > 0) {
			rep.Mismatched++
		}
	}
	for k, n := range execs {
		if !ours[k] {
			// A command the drill never sent, executed: not the drill's to judge, but say so.
			rep.Problems = append(rep.Problems, fmt.Sprintf("a car executed %s, which the drill did not send (%d times)", k, n))
		}
	}
	rep.Redelivered = redelivered
	switch {
	case rep.PendingAtKill == 0:
	case pendingOpen:
		rep.PendingAnsweredMs = -1
	default:
		rep.PendingAnsweredMs = pendingLast.Sub(ft.kill).Milliseconds()
	}
	for i := range rep.Phases {
		rep.Phases[i].P50Ms, rep.Phases[i].P99Ms, rep.Phases[i].MaxMs = quantilesMs(lat[i])
	}
	rep.WritesAcknowledged = len(writes)
	for _, w := range writes {
		if len(w.MissingOn) > 0 {
			rep.WritesLost++
			rep.Lost = append(rep.Lost, w)
		}
	}
	rep.OK = failoverVerdict(rep)
}

// failoverVerdict is the drill's rule: every request got exactly one terminal reply, no car
// executed a request twice, every terminal reply agrees with what the car did, no acknowledged
// write was lost, and nothing else went wrong.
func failoverVerdict(rep *FailoverReport) bool {
	return rep.Requests > 0 && rep.Answered == rep.Requests && rep.Duplicates == 0 && rep.Unanswered == 0 &&
		rep.NotPublished == 0 && rep.ExecutedTwice == 0 && rep.Mismatched == 0 && rep.WritesLost == 0 &&
		len(rep.Problems) == 0
}

// quantilesMs are the p50, p99 and max of ds, in milliseconds (0 for none).
func quantilesMs(ds []time.Duration) (p50, p99, maxMs float64) {
	if len(ds) == 0 {
		return 0, 0, 0
	}
	s := slices.Clone(ds)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	at := func(q float64) float64 {
		i := int(q*float64(len(s)) + 0.5)
		i = min(max(i-1, 0), len(s)-1) // nearest rank
		return float64(s[i].Microseconds()) / 1000
	}
	return at(0.5), at(0.99), float64(s[len(s)-1].Microseconds()) / 1000
}

// Summary is the report as a table for a person.
func (r FailoverReport) Summary() string {
	var b strings.Builder
	etcd := ""
	if r.Etcd != "" {
		etcd = " (" + r.Etcd + ")"
	}
	fmt.Fprintf(&b, "failover drill, %s on %s%s, %s at %g requests/s (%s): ", cmdline.Plural(r.Replicas, "replica"), r.Store, etcd,
		cmdline.Plural(r.Cars, "car"), r.Rate, strings.Join(r.Actions, ","))
	if r.OK {
		b.WriteString("PASSED\n")
	} else {
		b.WriteString("FAILED\n")
	}
	fmt.Fprintf(&b, "%s killed (SIGKILL) at %.1fs, started again at %.1fs, ready at %.1fs\n", r.Victim,
		float64(r.KillAtMs)/1000, float64(r.RestartAtMs)/1000, float64(r.BackAtMs)/1000)
	fmt.Fprintf(&b, "%-28s %8s %8s %8s %8s %8s %8s\n", "sent", "requests", "answered", "executed", "p50 ms", "p99 ms", "max ms")
	labels := map[string]string{"before": "before the kill", "during": "while the replica was gone", "after": "after it came back"}
	for _, p := range r.Phases {
		fmt.Fprintf(&b, "%-28s %8d %8d %8d %8.1f %8.1f %8.1f\n", labels[p.Phase], p.Requests, p.Answered, p.Executed, p.P50Ms, p.P99Ms, p.MaxMs)
	}
	fmt.Fprintf(&b, "requests %d: one terminal reply %d, duplicates %d, unanswered %d, not published %d\n",
		r.Requests, r.Answered, r.Duplicates, r.Unanswered, r.NotPublished)
	statuses := make([]string, 0, len(r.ByStatus))
	for s, n := range r.ByStatus {
		statuses = append(statuses, fmt.Sprintf("%s %d", s, n))
	}
	slices.Sort(statuses)
	fmt.Fprintf(&b, "terminal replies: %s\n", strings.Join(statuses, ", "))
	fmt.Fprintf(&b, "cars: %d executions, executed twice %d, handed again after executing %d; replies that disagree with the car %d\n",
		r.Executions, r.ExecutedTwice, r.Redelivered, r.Mismatched)
	switch {
	case r.PendingAtKill == 0:
		fmt.Fprintf(&b, "no request was pending at the kill\n")
	case r.PendingAnsweredMs < 0:
		fmt.Fprintf(&b, "%d requests pending at the kill: not all were ever answered\n", r.PendingAtKill)
	default:
		fmt.Fprintf(&b, "%d requests pending at the kill: all answered %.1fs after it\n", r.PendingAtKill, float64(r.PendingAnsweredMs)/1000)
	}
	fmt.Fprintf(&b, "acknowledged writes before the kill: %d, lost %d\n", r.WritesAcknowledged, r.WritesLost)
	for _, l := range r.Lost {
		fmt.Fprintf(&b, "lost: %s (not on %s)\n", l.What, strings.Join(l.MissingOn, ", "))
	}
	for _, p := range r.Problems {
		fmt.Fprintf(&b, "problem: %s\n", p)
	}
	return b.String()
}
