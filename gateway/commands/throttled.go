package commands

import (
	"fmt"
	"sync"

	"telematics/gateway/audit"
	"telematics/pkg/protocol"
)

// throttleSummaryEveryMs is how often, at most, the requests of one user refused for an
// exhausted refusal budget are written to the audit log: as one record that counts them.
const throttleSummaryEveryMs = 1000

// maxRememberMs bounds how long any command id is remembered: a command expires at most
// protocol.MaxCommandAheadMs after the gateway saw it, and its id is kept that much longer.
// An id remembered for longer (written before this bound was checked) is cut down to it.
const maxRememberMs = 2 * protocol.MaxCommandAheadMs

// throttled counts, per user, the requests refused because the user's refusal budget was
// used up, so that a flood of them is audited as a few counted records, not one per request,
// and no refusal goes unaccounted.
type throttled struct {
	mu    sync.Mutex
	users map[string]*throttledRun
}

type throttledRun struct {
	count  int   // refused and not yet in a summary record
	lastMs int64 // when the last summary record was written
}

// dueMs is when flushThrottled next has work for the run: its summary record, or forgetting
// its quiet user.
func (run *throttledRun) dueMs() int64 {
	if run.count > 0 {
		return run.lastMs + throttleSummaryEveryMs
	}
	return run.lastMs + 60_000
}

// throttledDueMs is the earliest dueMs of all runs (0: none).
func (r *Router) throttledDueMs() int64 {
	r.throttled.mu.Lock()
	defer r.throttled.mu.Unlock()
	at := int64(0)
	for _, run := range r.throttled.users {
		if d := run.dueMs(); at == 0 || d < at {
			at = d
		}
	}
	return at
}

// throttle answers a request refused for an exhausted refusal budget: rate_limited, nothing
// remembered, and counted towards the user's next summary record.
func (r *Router) throttle(req request, ev audit.Event) {
	nowMs := r.clock.Now().UnixMilli()
	r.throttled.mu.Lock()
	run := r.throttled.users[req.user]
	if run == nil {
		run = &throttledRun{}
		r.throttled.users[req.user] = run
	}
	run.count++
	n := 0
	if nowMs-run.lastMs >= throttleSummaryEveryMs {
		n, run.count, run.lastMs = run.count, 0, nowMs
	}
	dueMs := run.dueMs()
	r.throttled.mu.Unlock()
	r.armSweep(dueMs) // the sweep writes the summary, or forgets the quiet user
	if n > 0 {
		r.auditThrottled(req.user, n, nowMs)
	}
	r.log.Debug("request rejected", "user", req.user, "cmd_id", ev.CmdID, "reason", protocol.ReasonRateLimited)
	r.reply(req.user, protocol.Reply{ID: ev.CmdID, Status: protocol.ReplyRejected, Reason: protocol.ReasonRateLimited,
		VIN: ev.VIN, Action: protocol.Action(ev.Action)})
}

// flushThrottled writes the summary records that are due (all of them when all is set, at
// shutdown) and forgets users who have been quiet for a minute.
func (r *Router) flushThrottled(all bool) {
	nowMs := r.clock.Now().UnixMilli()
	type due struct {
		user string
		n    int
	}
	var out []due
	r.throttled.mu.Lock()
	for user, run := range r.throttled.users {
		switch {
		case run.count > 0 && (all || nowMs-run.lastMs >= throttleSummaryEveryMs):
			out = append(out, due{user, run.count})
			run.count, run.lastMs = 0, nowMs
		case run.count == 0 && nowMs-run.lastMs >= 60_000:
			delete(r.throttled.users, user)
		}
	}
	r.throttled.mu.Unlock()
	for _, d := range out {
		r.auditThrottled(d.user, d.n, nowMs)
	}
}

func (r *Router) auditThrottled(user string, n int, nowMs int64) {
	err := r.audit.Append(audit.Event{TsMs: nowMs, Kind: audit.KindCommand, User: user,
		Outcome: protocol.ReplyRejected, Reason: string(protocol.ReasonRateLimited),
		Detail: fmt.Sprintf("requests=%d refused: too many refused requests from this user", n)})
	if err != nil {
		r.log.Error("audit write failed", "user", user, "err", err)
	}
}

// clampSeen cuts every remembered id down to maxRememberMs from nowMs.
func clampSeen(seen map[string]int64, nowMs int64) map[string]int64 {
	for id, until := range seen {
		if until > nowMs+maxRememberMs {
			seen[id] = nowMs + maxRememberMs
		}
	}
	return seen
}

// Remembers reports whether id is among the command ids the router remembers (a request
// with it would be a duplicate).
func (r *Router) Remembers(id string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	_, ok := r.seen[id]
	return ok
}
