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
// each decision (kind command: accepted with its factors, or rejected with the reason) and
// each end (kind result: executed, failed or expired; kind late_reply: a result after the
// expiry), and where the car's local-link journal is filed (kind vehicle). The log holds no
// separate "received" or "sent" time: a request is decided as it is received, and an
// accepted one is sent once its decision is durable, so the decision's time stands for all
// three.

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
	States  []CommandState `json:"states"` // oldest first
	// LatencyMs is from the decision to the car's result (0 until there is one, or for a
	// request refused by the gateway).
	LatencyMs int64 `json:"latency_ms,omitempty"`
}

// CommandState is one step of a request: accepted or rejected (the gateway's decision),
// executed, failed or expired (its end), late_result (a result after the expiry), or what
// the car's journal says it did locally.
type CommandState struct {
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
			if f, ok := strings.CutPrefix(ev.Detail, "factors="); ok {
				c.Factors = strings.Split(f, ",")
			} else {
				st.Detail = ev.Detail
			}
		case audit.KindVehicle:
			c.Path = "local"
			if len(c.Factors) == 0 {
				c.Factors = []string{"key"}
			}
			st.Detail = ev.Detail
		case audit.KindLate:
			st.State = "late_result"
			st.Detail = ev.Outcome
		case audit.KindResult:
			st.Detail = ev.Detail
			if len(c.States) > 0 && c.States[0].State == protocol.ReplyAccepted {
				c.LatencyMs = ev.TsMs - c.States[0].AtMs
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
