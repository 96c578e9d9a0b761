package commands

import (
	"encoding/json"
	"sync"

	"telematics/gateway/store"
	"telematics/pkg/mqttc"
	"telematics/pkg/protocol"
)

// twins is the in-memory vehicle twin, written to bbolt in periodic batches: telemetry at fleet
// rates must not cost a commit per message.
type twins struct {
	mu    sync.Mutex
	byVIN map[string]*store.Twin
	dirty map[string]bool
	// received counts telemetry messages taken into the twin (for metrics and the bench).
	received uint64
	// seqs counts each car's telemetry sequence numbers, so losses can be counted.
	seqs map[string]*seqCount
}

// seqCount tracks one car's telemetry sequence numbers since the gateway started.
type seqCount struct {
	first, last, count uint64
}

func newTwins(stored []store.Twin) *twins {
	t := &twins{byVIN: map[string]*store.Twin{}, dirty: map[string]bool{}, seqs: map[string]*seqCount{}}
	for i := range stored {
		tw := stored[i]
		t.byVIN[tw.VIN] = &tw
	}
	return t
}

func (t *twins) get(vin string) *store.Twin {
	tw, ok := t.byVIN[vin]
	if !ok {
		tw = &store.Twin{VIN: vin}
		t.byVIN[vin] = tw
	}
	return tw
}

func (t *twins) online(vin string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	tw, ok := t.byVIN[vin]
	return ok && tw.Status == protocol.StatusOnline
}

func (t *twins) snapshot(vin string) (store.Twin, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	tw, ok := t.byVIN[vin]
	if !ok {
		return store.Twin{}, false
	}
	c := *tw
	c.Signals = make(map[string]any, len(tw.Signals))
	for k, v := range tw.Signals {
		c.Signals[k] = v
	}
	return c, true
}

func (t *twins) takeDirty() []store.Twin {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]store.Twin, 0, len(t.dirty))
	for vin := range t.dirty {
		tw := *t.byVIN[vin]
		// The signal map is replaced (never mutated) on update, so sharing it is safe.
		out = append(out, tw)
	}
	t.dirty = map[string]bool{}
	return out
}

func (t *twins) markDirty(ts []store.Twin) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, tw := range ts {
		t.dirty[tw.VIN] = true
	}
}

func (r *Router) onStatus(m mqttc.Message) {
	vin, suffix, ok := protocol.ParseVehicleTopic(m.Topic)
	if !ok || suffix != protocol.SuffixStatus {
		return
	}
	var st protocol.VehicleStatus
	if err := protocol.Decode(m.Payload, &st); err != nil ||
		(st.Status != protocol.StatusOnline && st.Status != protocol.StatusOffline) {
		r.log.Warn("malformed status from car", "vin", vin)
		return
	}
	r.twins.mu.Lock()
	defer r.twins.mu.Unlock()
	tw := r.twins.get(vin)
	if st.TsMs != 0 && st.TsMs < tw.StatusMs {
		return // an older status delivered late (e.g. a retained will after a newer online)
	}
	tw.Status, tw.StatusMs = st.Status, st.TsMs
	r.twins.dirty[vin] = true
}

func (r *Router) onTelemetry(m mqttc.Message) {
	vin, suffix, ok := protocol.ParseVehicleTopic(m.Topic)
	if !ok || suffix != protocol.SuffixTelemetry {
		return
	}
	var tel protocol.Telemetry
	if err := protocol.Decode(m.Payload, &tel); err != nil {
		r.log.Debug("malformed telemetry", "vin", vin)
		return
	}
	r.twins.mu.Lock()
	defer r.twins.mu.Unlock()
	r.twins.received++
	if tel.Seq != 0 {
		sc, ok := r.twins.seqs[vin]
		if !ok {
			sc = &seqCount{first: tel.Seq, last: tel.Seq}
			r.twins.seqs[vin] = sc
		}
		sc.count++
		sc.first, sc.last = min(sc.first, tel.Seq), max(sc.last, tel.Seq)
	}
	tw := r.twins.get(vin)
	if tel.TsMs < tw.TelemetryMs {
		return
	}
	merged := make(map[string]any, len(tw.Signals)+len(tel.Signals))
	for k, v := range tw.Signals {
		merged[k] = v
	}
	for k, v := range tel.Signals {
		merged[k] = v
	}
	tw.Signals, tw.TelemetryMs, tw.TelemetrySeq = merged, tel.TsMs, tel.Seq
	r.twins.dirty[vin] = true
}

// Twin returns the last known state of a car.
func (r *Router) Twin(vin string) (store.Twin, bool) { return r.twins.snapshot(vin) }

// TelemetryReceived counts telemetry messages taken into the twin since start.
func (r *Router) TelemetryReceived() uint64 {
	r.twins.mu.Lock()
	defer r.twins.mu.Unlock()
	return r.twins.received
}

// TelemetryStats counts telemetry since the gateway started: messages received, cars
// reporting, and messages lost (gaps in each car's sequence numbers between the first and the
// last one seen; a car that restarted skips numbers on purpose, so run the count on a fresh
// fleet).
type TelemetryStats struct {
	Received uint64 `json:"telemetry_received"`
	Lost     uint64 `json:"telemetry_lost"`
	Cars     int    `json:"cars_reporting"`
}

// TelemetryStats returns the counts.
func (r *Router) TelemetryStats() TelemetryStats {
	r.twins.mu.Lock()
	defer r.twins.mu.Unlock()
	st := TelemetryStats{Received: r.twins.received, Cars: len(r.twins.seqs)}
	for _, sc := range r.twins.seqs {
		if span := sc.last - sc.first + 1; span > sc.count {
			st.Lost += span - sc.count
		}
	}
	return st
}

// MarshalTwin is the JSON form the admin API shows.
func MarshalTwin(t store.Twin) json.RawMessage {
	b, _ := json.Marshal(t)
	return b
}
