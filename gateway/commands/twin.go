package commands

import (
	"encoding/json"
	"sync"

	"telematics/gateway/store"
	"telematics/pkg/mqttc"
	"telematics/pkg/protocol"
)

// twins is the in-memory vehicle twin, written to bbolt in periodic batches: telemetry at fleet
// rates must not cost a commit per message. It is split into shards by VIN, each with its own
// lock, so the handler workers updating different cars do not queue on one mutex.
type twins struct {
	shards [twinShards]twinShard
}

// twinShards is how many locks the twins are spread over: far more than the cores that update
// them, few enough that a full scan (stats, flush) stays cheap.
const twinShards = 64

type twinShard struct {
	mu    sync.Mutex
	byVIN map[string]*store.Twin
	dirty map[string]bool
	// received counts telemetry messages taken into the twin (for metrics and the bench).
	received uint64
	// seqs counts each car's telemetry sequence numbers, so losses can be counted.
	seqs map[string]*seqCount
}

// seqCount tracks one car's telemetry sequence numbers since the gateway started. skipped
// counts the numbers a restarted car left unused: a jump forward to the start of a block
// (protocol.TelemetrySeqBlock) is a restart, not a loss.
type seqCount struct {
	first, last, count, skipped uint64
}

// add counts seq.
func (sc *seqCount) add(seq uint64) {
	if seq > sc.last+1 && seq%protocol.TelemetrySeqBlock == 1 {
		sc.skipped += seq - sc.last - 1
	}
	sc.count++
	sc.first, sc.last = min(sc.first, seq), max(sc.last, seq)
}

// lost is how many numbers between the first and the last seen never arrived.
func (sc *seqCount) lost() uint64 {
	if seen := sc.count + sc.skipped; sc.last-sc.first+1 > seen {
		return sc.last - sc.first + 1 - seen
	}
	return 0
}

func newTwins(stored []store.Twin) *twins {
	t := &twins{}
	for i := range t.shards {
		t.shards[i] = twinShard{byVIN: map[string]*store.Twin{}, dirty: map[string]bool{}, seqs: map[string]*seqCount{}}
	}
	for i := range stored {
		tw := stored[i]
		t.shard(tw.VIN).byVIN[tw.VIN] = &tw
	}
	return t
}

// shard returns vin's shard.
func (t *twins) shard(vin string) *twinShard { return &t.shards[shardOf(vin, twinShards)] }

// get returns vin's twin, created if new; the caller holds the shard's lock.
func (sh *twinShard) get(vin string) *store.Twin {
	tw, ok := sh.byVIN[vin]
	if !ok {
		tw = &store.Twin{VIN: vin}
		sh.byVIN[vin] = tw
	}
	return tw
}

func (t *twins) online(vin string) bool {
	sh := t.shard(vin)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	tw, ok := sh.byVIN[vin]
	return ok && tw.Status == protocol.StatusOnline
}

// copyTwin copies tw with its own signal map: the twin's map is updated in place.
func copyTwin(tw *store.Twin) store.Twin {
	c := *tw
	c.Signals = make(map[string]any, len(tw.Signals))
	for k, v := range tw.Signals {
		c.Signals[k] = v
	}
	return c
}

func (t *twins) snapshot(vin string) (store.Twin, bool) {
	sh := t.shard(vin)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	tw, ok := sh.byVIN[vin]
	if !ok {
		return store.Twin{}, false
	}
	return copyTwin(tw), true
}

func (t *twins) takeDirty() []store.Twin {
	var out []store.Twin
	for i := range t.shards {
		sh := &t.shards[i]
		sh.mu.Lock()
		for vin := range sh.dirty {
			out = append(out, copyTwin(sh.byVIN[vin]))
		}
		clear(sh.dirty)
		sh.mu.Unlock()
	}
	return out
}

func (t *twins) markDirty(ts []store.Twin) {
	for _, tw := range ts {
		sh := t.shard(tw.VIN)
		sh.mu.Lock()
		sh.dirty[tw.VIN] = true
		sh.mu.Unlock()
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
	sh := r.twins.shard(vin)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	tw := sh.get(vin)
	if st.TsMs != 0 && st.TsMs < tw.StatusMs {
		return // an older status delivered late (e.g. a retained will after a newer online)
	}
	tw.Status, tw.StatusMs = st.Status, st.TsMs
	sh.dirty[vin] = true
	r.armFlush()
}

func (r *Router) onTelemetry(m mqttc.Message) {
	vin, suffix, ok := protocol.ParseVehicleTopic(m.Topic)
	if !ok || suffix != protocol.SuffixTelemetry {
		return
	}
	var tel protocol.Telemetry
	if err := protocol.DecodeTelemetry(m.Payload, &tel); err != nil {
		r.log.Debug("malformed telemetry", "vin", vin)
		return
	}
	sh := r.twins.shard(vin)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	sh.received++
	if tel.Seq != 0 {
		sc, ok := sh.seqs[vin]
		if !ok {
			sc = &seqCount{first: tel.Seq, last: tel.Seq}
			sh.seqs[vin] = sc
		}
		sc.add(tel.Seq)
	}
	tw := sh.get(vin)
	if tel.TsMs < tw.TelemetryMs {
		return
	}
	if tw.Signals == nil {
		tw.Signals = make(map[string]any, len(tel.Signals))
	}
	for k, v := range tel.Signals {
		tw.Signals[k] = v
	}
	tw.TelemetryMs, tw.TelemetrySeq = tel.TsMs, tel.Seq
	sh.dirty[vin] = true
	r.armFlush()
}

// Twin returns the last known state of a car.
func (r *Router) Twin(vin string) (store.Twin, bool) { return r.twins.snapshot(vin) }

// TelemetryStats counts telemetry since the gateway started: messages received, cars
// reporting, and messages lost (gaps in each car's sequence numbers between the first and the
// last one seen, but for the numbers a restarted car skips on purpose).
type TelemetryStats struct {
	Received uint64 `json:"telemetry_received"`
	Lost     uint64 `json:"telemetry_lost"`
	Cars     int    `json:"cars_reporting"`
}

// TelemetryStats returns the counts.
func (r *Router) TelemetryStats() TelemetryStats {
	var st TelemetryStats
	for i := range r.twins.shards {
		sh := &r.twins.shards[i]
		sh.mu.Lock()
		st.Received += sh.received
		st.Cars += len(sh.seqs)
		for _, sc := range sh.seqs {
			st.Lost += sc.lost()
		}
		sh.mu.Unlock()
	}
	return st
}

// OnlineCount is how many cars the twin holds as online.
func (r *Router) OnlineCount() int {
	n := 0
	for i := range r.twins.shards {
		sh := &r.twins.shards[i]
		sh.mu.Lock()
		for _, tw := range sh.byVIN {
			if tw.Status == protocol.StatusOnline {
				n++
			}
		}
		sh.mu.Unlock()
	}
	return n
}

// MarshalTwin is the JSON form the admin API shows.
func MarshalTwin(t store.Twin) json.RawMessage {
	b, _ := json.Marshal(t)
	return b
}
