package console

import (
	"net/http"
	"sort"
	"strings"

	"telematics/gateway/audit"
	"telematics/gateway/httpapi"
	"telematics/pkg/protocol"
)

// The command timeline of a car page is read from the audit log, where the router records
// each decision (kind command: accepted with its factors, or rejected with the reason; with
// the request's arrival), each end (kind result: executed, rejected by the car, failed or
// expired; with when the command was sent to the car and the car's own time of its result;
// kind late_reply: a result after the expiry), and where the car's local-link journal is
// filed (kind vehicle). A request's states are assembled from its decision record and its
// result record (the same cmd_id): the router writes no record for the states in between.

// timelineRecords bounds the audit records read for one car's timeline.
const timelineRecords = 400

// Command is one request to the car as the timeline shows it.
type Command struct {
	ID     string `json:"id"`
	User   string `json:"user,omitempty"`
	Action string `json:"action,omitempty"`
	// Path is "cloud" (an app request through the gateway) or "local" (the car's local link,
	// from its journal).
	Path    string         `json:"path"`
	Factors []string       `json:"factors"`
	States  []CommandState `json:"states"` // in the order of the request's life
	// LatencyMs is from the request's arrival at the gateway (the decision, on records that
	// predate arrival times) to the car's result reaching the gateway: 0 until there is one,
	// and for a request refused by the gateway.
	LatencyMs int64 `json:"latency_ms,omitempty"`
	// DecisionMs is from the request's arrival to the gateway's decision (0: unknown).
	DecisionMs int64 `json:"decision_ms,omitempty"`
}

// Steps of a request's life, CommandState.Step.
const (
	StepReceived = "received" // the request reached the gateway
	StepDecided  = "decided"  // the gateway's decision: State accepted, or rejected with the reason
	StepSent     = "sent"     // the command was handed to the broker for the car
	StepCar      = "car"      // the car's result by its own clock: executed, rejected (reason) or failed
	StepResult   = "result"   // the result reached the gateway (State as the car's), or expired
	StepLate     = "late"     // a result after the expiry
	StepJournal  = "journal"  // what the car did over its local link, by its clock (its journal)
)

// CommandState is one step of a request: State is the step's outcome (received, accepted,
// rejected, sent, executed, failed, expired, late_result, or what the car's journal says).
type CommandState struct {
	Step   string `json:"step"`
	State  string `json:"state"`
	AtMs   int64  `json:"at"`
	Reason string `json:"reason,omitempty"`
	Detail string `json:"detail,omitempty"`
}

// Timeline is GET /console/api/cars/{vin}/commands: the newest requests first.
type Timeline struct {
	VIN      string    `json:"vin"`
	Commands []Command `json:"commands"`
	NowMs    int64     `json:"now"`
}

// timelineKind reports whether an audit record of this kind belongs on a timeline.
func timelineKind(kind string) bool {
	switch kind {
	case audit.KindCommand, audit.KindResult, audit.KindLate, audit.KindVehicle:
		return true
	}
	return false
}

// buildTimeline groups records (newest first, as audit.Query returns them) by command id.
func buildTimeline(evs []audit.Event) []Command {
	byID := map[string]*Command{}
	startMs := map[string]int64{} // the request's arrival, or its decision
	var order []string
	for i := len(evs) - 1; i >= 0; i-- { // oldest first
		ev := evs[i]
		if !timelineKind(ev.Kind) || ev.CmdID == "" {
			continue
		}
		c := byID[ev.CmdID]
		if c == nil {
			c = &Command{ID: ev.CmdID, Path: "cloud", Factors: []string{}}
			byID[ev.CmdID] = c
			order = append(order, ev.CmdID)
		}
		if c.User == "" {
			c.User = ev.User
		}
		if c.Action == "" {
			c.Action = ev.Action
		}
		st := CommandState{State: ev.Outcome, AtMs: ev.TsMs, Reason: ev.Reason}
		switch ev.Kind {
		case audit.KindCommand:
			st.Step = StepDecided
			if f, ok := strings.CutPrefix(ev.Detail, "factors="); ok {
				c.Factors = strings.Split(f, ",")
			} else {
				st.Detail = ev.Detail
			}
			startMs[c.ID] = ev.TsMs
			if ev.ReceivedMs != 0 {
				c.States = append(c.States, CommandState{Step: StepReceived, State: "received", AtMs: ev.ReceivedMs})
				startMs[c.ID] = ev.ReceivedMs
				c.DecisionMs = ev.TsMs - ev.ReceivedMs
			}
		case audit.KindVehicle:
			st.Step = StepJournal
			c.Path = "local"
			if len(c.Factors) == 0 {
				c.Factors = []string{"key"}
			}
			st.Detail = ev.Detail
		case audit.KindLate:
			st.Step = StepLate
			st.State = "late_result"
			st.Detail = ev.Outcome
		case audit.KindResult:
			st.Step = StepResult
			st.Detail = ev.Detail
			if ev.SentMs != 0 {
				c.States = append(c.States, CommandState{Step: StepSent, State: "sent", AtMs: ev.SentMs})
			}
			if ev.CarMs != 0 {
				c.States = append(c.States, CommandState{Step: StepCar, State: ev.Outcome, AtMs: ev.CarMs, Reason: ev.Reason})
			}
			if from, ok := startMs[c.ID]; ok && decidedAccepted(c.States) {
				c.LatencyMs = ev.TsMs - from
			}
		}
		c.States = append(c.States, st)
	}
	out := make([]Command, 0, len(order))
	for i := len(order) - 1; i >= 0; i-- {
		out = append(out, *byID[order[i]])
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].States[0].AtMs > out[j].States[0].AtMs })
	return out
}

// decidedAccepted reports whether states hold the gateway's acceptance.
func decidedAccepted(states []CommandState) bool {
	for _, st := range states {
		if st.Step == StepDecided {
			return st.State == protocol.ReplyAccepted
		}
	}
	return false
}

// commands is GET /console/api/cars/{vin}/commands.
func (c *Console) commands(w http.ResponseWriter, r *http.Request) {
	vin, ok := pathVIN(w, r)
	if !ok {
		return
	}
	evs, err := c.d.Audit.Query(audit.Filter{VIN: vin, Limit: timelineRecords})
	if err != nil {
		httpapi.Fail(w, c.log, err)
		return
	}
	httpapi.WriteJSON(w, http.StatusOK, Timeline{VIN: vin, Commands: buildTimeline(evs), NowMs: c.now().UnixMilli()})
}
