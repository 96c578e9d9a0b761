package console

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"telematics/gateway/audit"
	"telematics/gateway/httpapi"
	"telematics/gateway/store"
	"telematics/pkg/protocol"
)

// The fleet watcher looks at every car each interval and keeps the changes since in a ring,
// numbered; event streams send them on, and a stream that reconnects with the number of the
// last change it saw (Last-Event-ID) gets what it missed, or the whole fleet again when the
// ring no longer holds it or the gateway restarted (the id names the watcher's epoch).
//
// Looking (rather than being told by the router) keeps the console apart from the command
// path: a slow console never slows a command, and a change is at most one interval late.
//
// The cars are looked at only while an event stream is open, and on demand (fresh) when a
// stream opens or a REST call needs them: with no console open the watcher reads only the new
// audit records (the alerts' lockouts and 2FA failures, and the car pages' timeline pings), so
// an idle gateway does not summarize and encode its fleet four times a second. The look made
// on demand compares with what the streams were last told, so a stream resuming from an id
// gets every change it missed, in one batch. A car whose summary did not change since the last
// look is not encoded again.

// ringSize bounds the changes kept for streams that reconnect.
const ringSize = 8192

// vehiclesEvery: the list of cars is read from the store every this many looks (the twin and
// the whitelists are in memory and looked at every time).
const vehiclesEvery = 8

// pruneEvery: ended sessions whose cookie never came back are deleted this often.
const pruneEvery = time.Minute

// maxStreamsPerOperator bounds one operator's event streams (a tab each).
const maxStreamsPerOperator = 16

// maxStreams bounds the event streams open at once.
const maxStreams = 256

type change struct {
	seq uint64
	car json.RawMessage // a Car, or {"vin":…,"gone":true}
}

type watcher struct {
	c        *Console
	interval time.Duration
	epoch    string

	// lookMu serializes the looks and the ticks (run's, and fresh's looks on demand).
	lookMu   sync.Mutex
	lookedAt time.Time // the end of the last look at the cars (real time)
	listedAt time.Time // the last read of the list of cars (real time)

	mu        sync.Mutex
	seq       uint64
	cars      map[string]json.RawMessage // vin -> encoded Car
	decoded   map[string]Car
	ring      []change      // ascending seq, at most ringSize
	changed   chan struct{} // closed and replaced at every change
	vehicles  []store.Vehicle
	looks     int // looks at the cars
	encodes   int // cars encoded by the looks
	ticks     int // run's ticks
	streams   int
	streamsOf map[string]int // operator -> open streams
	auditSeq  uint64         // the newest audit record looked at (readAudit); only under lookMu
	alerts    alertState     // lockouts and failures: only under lookMu; list and seq: under mu

	stopc chan struct{}
	done  chan struct{}
}

func newWatcher(c *Console, interval time.Duration) (*watcher, error) {
	tok, err := randomToken()
	if err != nil {
		return nil, err
	}
	w := &watcher{c: c, interval: interval, epoch: tok[:10], cars: map[string]json.RawMessage{}, decoded: map[string]Car{}, streamsOf: map[string]int{},
		changed: make(chan struct{}), stopc: make(chan struct{}), done: make(chan struct{})}
	w.lookMu.Lock()
	err = w.look()
	w.lookMu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("console: read the fleet: %w", err)
	}
	go w.run()
	return w, nil
}

func (w *watcher) run() {
	defer close(w.done)
	// Real time: this paces the looks; nothing expires by it.
	t := time.NewTicker(w.interval)
	defer t.Stop()
	lastPrune := w.c.now()
	for {
		select {
		case <-w.stopc:
			return
		case <-t.C:
			if err := w.tick(); err != nil {
				w.c.log.Warn("console: fleet not read", "err", err)
			}
			if now := w.c.now(); now.Sub(lastPrune) >= pruneEvery {
				lastPrune = now
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				if _, err := w.c.pruneSessions(ctx); err != nil {
					w.c.log.Warn("console: ended sessions not pruned", "err", err)
				}
				cancel()
			}
		}
	}
}

func (w *watcher) stop() {
	close(w.stopc)
	<-w.done
}

// tick is run's work at each interval: a look at every car while a stream is open; with none,
// only the new audit records (a few, and the records are read at most timelineRecords at a
// time, so a lockout is not missed however long nobody watches).
func (w *watcher) tick() error {
	w.lookMu.Lock()
	defer w.lookMu.Unlock()
	w.mu.Lock()
	w.ticks++
	streams := w.streams
	w.mu.Unlock()
	if streams > 0 {
		return w.look()
	}
	pings := w.readAudit(false)
	w.alerts.failures = recentFailures(w.alerts.failures, w.c.now())
	w.mu.Lock()
	defer w.mu.Unlock()
	w.publish(pings, false)
	return nil
}

// fresh looks at the cars unless a look ended less than an interval ago: a stream that opens,
// or a REST call that reads the fleet, gets the cars as they are. After a longer pause than
// the list's own period, the look reads the list of cars and the readiness again.
func (w *watcher) fresh() error {
	w.lookMu.Lock()
	defer w.lookMu.Unlock()
	if time.Since(w.lookedAt) < w.interval {
		return nil
	}
	if time.Since(w.listedAt) >= vehiclesEvery*w.interval {
		w.mu.Lock()
		w.looks += (vehiclesEvery - w.looks%vehiclesEvery) % vehiclesEvery // a look that reads everything
		w.mu.Unlock()
	}
	return w.look()
}

// look compares every car with what the streams were last told and records the changes; the
// caller holds lookMu.
func (w *watcher) look() error {
	defer func() { w.lookedAt = time.Now() }()
	w.mu.Lock()
	vs, looks := w.vehicles, w.looks
	prevCars, prevEnc := w.decoded, w.cars
	w.looks++
	w.mu.Unlock()
	if vs == nil || looks%vehiclesEvery == 0 {
		var err error
		if vs, err = w.c.d.Store.ListVehicles(); err != nil {
			w.mu.Lock()
			if w.computeAlerts(w.decoded, err) {
				close(w.changed)
				w.changed = make(chan struct{})
			}
			w.mu.Unlock()
			return err
		}
		if vs == nil {
			vs = []store.Vehicle{}
		}
		w.listedAt = time.Now()
	}
	// On a shared store (etcd) each car's whitelist state is a read of the store: it is read
	// with the list of cars, not at every look (for every car, on every replica: 1,200 reads
	// a second for 100 cars and 3 replicas). One gateway has it in memory.
	readWL := looks%vehiclesEvery == 0 || !w.c.d.Store.Shared()
	cars := make(map[string]Car, len(vs))
	enc := make(map[string]json.RawMessage, len(vs))
	encodes := 0
	for _, v := range vs {
		var prev *Car
		if old, ok := prevCars[v.VIN]; ok && !readWL {
			prev = &old
		}
		car := w.c.summarizeWith(v, prev)
		if b, ok := prevEnc[v.VIN]; ok && car.same(prevCars[v.VIN]) {
			cars[v.VIN], enc[v.VIN] = car, b // unchanged: not encoded again
			continue
		}
		b, err := json.Marshal(car)
		if err != nil {
			return err
		}
		encodes++
		cars[v.VIN], enc[v.VIN] = car, b
	}
	pings := w.readAudit(looks == 0)
	if w.c.d.Ready != nil && looks%vehiclesEvery == 0 {
		// Not at every look: readiness pings the store (an etcd round trip).
		w.alerts.readyErr = w.c.d.Ready()
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.vehicles = vs
	w.encodes += encodes
	var news []json.RawMessage
	for vin, b := range enc {
		if old, ok := w.cars[vin]; !ok || !bytes.Equal(old, b) {
			news = append(news, b)
		}
	}
	for vin := range w.cars {
		if _, ok := enc[vin]; !ok {
			gone, _ := json.Marshal(map[string]any{"vin": vin, "gone": true})
			news = append(news, gone)
		}
	}
	w.cars, w.decoded = enc, cars
	news = append(news, pings...)
	w.publish(news, w.computeAlerts(cars, nil))
	return nil
}

// publish numbers the changes, keeps them in the ring and wakes the streams (also for a change
// of the alerts alone); the caller holds mu.
func (w *watcher) publish(news []json.RawMessage, alerted bool) {
	if len(news) == 0 && !alerted {
		return
	}
	for _, b := range news {
		w.seq++
		w.ring = append(w.ring, change{seq: w.seq, car: b})
	}
	if over := len(w.ring) - ringSize; over > 0 {
		w.ring = append(w.ring[:0:0], w.ring[over:]...)
	}
	close(w.changed)
	w.changed = make(chan struct{})
}

// readAudit reads the audit records appended since the last look, notes the lockouts and 2FA
// failures among them for the alerts, and returns a {"vin":…,"commands":true} change for each
// car with new timeline records: the car page reads its timeline again. Only the newest
// records are read (at most timelineRecords since the last look): a car missed in a burst
// still shows its requests at the page's next reload or car change. The first look reads the
// newest records for lockouts still running and reports no change.
func (w *watcher) readAudit(first bool) []json.RawMessage {
	log := w.c.d.Audit
	if log == nil {
		return nil
	}
	last, err := log.LastSeq()
	if err != nil || last <= w.auditSeq {
		return nil
	}
	from := w.auditSeq
	w.auditSeq = last
	n := last - from
	if first {
		n = timelineRecords
	}
	evs, err := log.Query(audit.Filter{Limit: int(min(n, timelineRecords))})
	if err != nil {
		w.c.log.Warn("console: audit not read", "err", err)
		return nil
	}
	w.noteAudit(evs, from)
	if first {
		return nil // nothing is new to an open page
	}
	seen := map[string]bool{}
	var out []json.RawMessage
	for _, ev := range evs {
		if ev.Seq <= from || ev.VIN == "" || !timelineKind(ev.Kind) || seen[ev.VIN] {
			continue
		}
		seen[ev.VIN] = true
		b, _ := json.Marshal(map[string]any{"vin": ev.VIN, "commands": true})
		out = append(out, b)
	}
	return out
}

// snapshot returns every car in VIN order, as they are (fresh), and the id of the last change
// they include.
func (w *watcher) snapshot() ([]Car, string) {
	if err := w.fresh(); err != nil {
		w.c.log.Warn("console: fleet not read", "err", err)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.snapshotLocked()
}

func (w *watcher) snapshotLocked() ([]Car, string) {
	out := make([]Car, 0, len(w.decoded))
	for _, car := range w.decoded {
		out = append(out, car)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].VIN < out[j].VIN })
	return out, w.id(w.seq)
}

func (w *watcher) id(seq uint64) string { return w.epoch + "-" + strconv.FormatUint(seq, 10) }

// since returns the changes after seq and the last one's number; ok=false when the ring no
// longer holds them all (the stream needs the whole fleet).
func (w *watcher) since(seq uint64) (cars []json.RawMessage, last uint64, wake <-chan struct{}, ok bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	wake = w.changed
	if seq > w.seq {
		return nil, w.seq, wake, false
	}
	if seq == w.seq {
		return nil, seq, wake, true
	}
	if len(w.ring) == 0 || w.ring[0].seq > seq+1 {
		return nil, w.seq, wake, false
	}
	i := sort.Search(len(w.ring), func(i int) bool { return w.ring[i].seq > seq })
	for _, ch := range w.ring[i:] {
		cars = append(cars, ch.car)
	}
	return cars, w.seq, wake, true
}

// parseID reads a Last-Event-ID of this watcher's epoch; ok=false for any other.
func (w *watcher) parseID(s string) (uint64, bool) {
	i := strings.LastIndexByte(s, '-') // the epoch is base64url: it may hold '-' itself
	if i < 0 || s[:i] != w.epoch || len(s)-i > 21 {
		return 0, false
	}
	num := s[i+1:]
	n, err := strconv.ParseUint(num, 10, 64)
	return n, err == nil
}

// openStream counts a stream of operator op, unless maxStreams are open or op has
// maxStreamsPerOperator: one session cannot take every other operator's streams.
func (w *watcher) openStream(op string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.streams >= maxStreams || w.streamsOf[op] >= maxStreamsPerOperator {
		return false
	}
	w.streams++
	w.streamsOf[op]++
	return true
}

func (w *watcher) closeStream(op string) {
	w.mu.Lock()
	w.streams--
	if w.streamsOf[op]--; w.streamsOf[op] <= 0 {
		delete(w.streamsOf, op)
	}
	w.mu.Unlock()
}

// events is GET /console/api/events, a Server-Sent Events stream:
//
//	event: fleet  data: Fleet            the whole fleet (first, and whenever a stream must resync),
//	                                     in parts of at most fleetChunk cars: "more" on all but the last
//	event: cars   data: [Car | {"vin","gone":true}, …]   the cars that changed
//	event: alerts data: [Alert, …]       the whole alerts list, at the start and when it changes
//	event: ended  data: {}               the session ended: log in again
//
// Each event's id is the number of the last change it includes; a client that reconnects
// with it in Last-Event-ID (EventSource does) continues from there.
func (c *Console) events(w http.ResponseWriter, r *http.Request) {
	wt := c.watch
	op := sessionOf(r).op.Name
	if !wt.openStream(op) {
		httpapi.Error(w, http.StatusServiceUnavailable, protocol.ReasonRateLimited, "too many console streams open; close other console tabs or try again later")
		return
	}
	defer wt.closeStream(op)
	// The cars and the alerts as they are now: nobody may have watched before this stream.
	if err := wt.fresh(); err != nil {
		c.log.Warn("console: fleet not read", "err", err)
	}
	rc := http.NewResponseController(w)
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)

	send := func(event, id string, data any) error {
		b, err := json.Marshal(data)
		if err != nil {
			return err
		}
		// An I/O bound, renewed at every write: the server's WriteTimeout would cut the stream.
		_ = rc.SetWriteDeadline(time.Now().Add(c.cfg.KeepAlive + 30*time.Second))
		if id != "" {
			fmt.Fprintf(w, "id: %s\n", id)
		}
		if _, err := fmt.Fprintf(w, "event: %s\ndata: %s\n\n", event, b); err != nil {
			return err
		}
		return rc.Flush()
	}
	// A stream starts with no alerts (the page clears its panel when a stream opens): an empty
	// list is not sent until it changes.
	wt.mu.Lock()
	sentAlerts := wt.alerts.seq
	if len(wt.alerts.list) > 0 {
		sentAlerts--
	}
	wt.mu.Unlock()
	sendAlerts := func() error {
		wt.mu.Lock()
		list, seq := wt.alerts.list, wt.alerts.seq
		wt.mu.Unlock()
		if seq == sentAlerts {
			return nil
		}
		sentAlerts = seq
		return send("alerts", "", list)
	}
	// The whole fleet goes in parts (a page at 20,000 cars draws the first ones while the rest
	// arrive); only the last part carries the id, so a stream cut in between resumes from the
	// change before (or from the start) and the page drops the parts it got.
	resync := func() (uint64, error) {
		wt.mu.Lock()
		cars, id := wt.snapshotLocked()
		seq := wt.seq
		wt.mu.Unlock()
		now := c.now().UnixMilli()
		for len(cars) > fleetChunk {
			if err := send("fleet", "", Fleet{Cars: cars[:fleetChunk], EventID: id, NowMs: now, More: true}); err != nil {
				return seq, err
			}
			cars = cars[fleetChunk:]
		}
		return seq, send("fleet", id, Fleet{Cars: cars, EventID: id, NowMs: now})
	}

	var last uint64
	var err error
	if seq, ok := wt.parseID(r.Header.Get("Last-Event-ID")); ok {
		last = seq
	} else if last, err = resync(); err != nil {
		return
	}
	keep := time.NewTicker(c.cfg.KeepAlive)
	defer keep.Stop()
	for {
		cars, seq, wake, ok := wt.since(last)
		switch {
		case !ok:
			if last, err = resync(); err != nil {
				return
			}
			continue
		case len(cars) > 0:
			if err := send("cars", wt.id(seq), cars); err != nil {
				return
			}
			last = seq
		}
		if err := sendAlerts(); err != nil {
			return
		}
		select {
		case <-r.Context().Done():
			return
		case <-wt.stopc:
			return
		case <-wake:
		case <-keep.C:
			ctx, cancel := reqCtx(r)
			_, err := c.lookup(ctx, r, false)
			cancel()
			if errors.Is(err, errNoSession) {
				_ = send("ended", "", struct{}{})
				return
			}
			_ = rc.SetWriteDeadline(time.Now().Add(c.cfg.KeepAlive + 30*time.Second))
			if _, err := fmt.Fprint(w, ": keep-alive\n\n"); err != nil || rc.Flush() != nil {
				return
			}
		}
	}
}
