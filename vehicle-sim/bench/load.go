package bench

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"

	"telematics/pkg/protocol"
	"telematics/pkg/tlsconf"
)

// loadJob is what one load process runs: its share of the cars and how they connect.
type loadJob struct {
	Broker             string                 `json:"broker"` // host:port
	Creds              []protocol.Credentials `json:"creds"`
	SourceIPs          []string               `json:"source_ips,omitempty"` // dial from these, round robin; none: the kernel's choice
	FirstIndex         int                    `json:"first_index"`          // the global index of Creds[0], for the round robin
	ConnectRate        float64                `json:"connect_rate"`         // cars/s; 0: no pacing
	ConnectConcurrency int                    `json:"connect_concurrency"`  // handshakes at once
	ConnectTimeout     time.Duration          `json:"connect_timeout"`
	KeepAlive          time.Duration          `json:"keep_alive"`
	Inflight           int                    `json:"inflight"` // QoS 1 publishes awaiting PUBACK, per car
	// CAPEM, when set, makes the cars connect over TLS, verifying the broker with this CA.
	CAPEM string `json:"ca_pem,omitempty"`
}

// op is one instruction to a load process, executed in order.
type op struct {
	Op   string  `json:"op"`             // connect, publish, quiet, stop
	Upto int     `json:"upto,omitempty"` // connect: cars [0, upto) of the job's cars
	Rate float64 `json:"rate,omitempty"` // publish: messages/s per car; negative: as fast as the broker takes them
	QoS  byte    `json:"qos,omitempty"`  // publish
}

// Operations.
const (
	opConnect = "connect"
	opPublish = "publish"
	opQuiet   = "quiet" // stop publishing and wait for outstanding PUBACKs
	opStop    = "stop"  // disconnect every car and report the final counters
)

// maxBatch bounds the messages one car writes in one system call when it is behind schedule
// (or publishing as fast as it can).
const maxBatch = 32

// quietTimeout bounds the wait for outstanding PUBACKs after publishing stops.
const quietTimeout = 10 * time.Second

// Counters is a load process's running totals, sent to the parent as JSON.
type Counters struct {
	Ops           int    `json:"ops"` // instructions completed
	Attempted     int64  `json:"attempted"`
	Connected     int64  `json:"connected"` // now
	ConnectFailed int64  `json:"connect_failed"`
	Refused       int64  `json:"refused"`
	Dropped       int64  `json:"dropped"` // connections lost after CONNACK
	SubRefused    int64  `json:"sub_refused"`
	Sent          int64  `json:"sent"` // telemetry written to the socket
	SentQoS1      int64  `json:"sent_qos1"`
	Acked         int64  `json:"acked"` // telemetry acknowledged (QoS 1)
	PubErrors     int64  `json:"pub_errors"`
	Received      int64  `json:"received"` // publications the cars received
	Errors        int64  `json:"errors"`
	FirstError    string `json:"first_error,omitempty"`
	Final         bool   `json:"final,omitempty"`

	ConnectLatency *hdrhistogram.Snapshot `json:"connect_latency,omitempty"` // µs, final only
	AckLatency     *hdrhistogram.Snapshot `json:"ack_latency,omitempty"`     // µs, final only
}

// merge adds o into c (histograms too).
func (c *Counters) merge(o Counters) {
	c.Attempted += o.Attempted
	c.Connected += o.Connected
	c.ConnectFailed += o.ConnectFailed
	c.Refused += o.Refused
	c.Dropped += o.Dropped
	c.SubRefused += o.SubRefused
	c.Sent += o.Sent
	c.SentQoS1 += o.SentQoS1
	c.Acked += o.Acked
	c.PubErrors += o.PubErrors
	c.Received += o.Received
	c.Errors += o.Errors
	if c.FirstError == "" {
		c.FirstError = o.FirstError
	}
	c.ConnectLatency = mergeSnapshots(c.ConnectLatency, o.ConnectLatency)
	c.AckLatency = mergeSnapshots(c.AckLatency, o.AckLatency)
}

func mergeSnapshots(a, b *hdrhistogram.Snapshot) *hdrhistogram.Snapshot {
	switch {
	case b == nil:
		return a
	case a == nil:
		return b
	}
	h := hdrhistogram.Import(a)
	h.Merge(hdrhistogram.Import(b))
	return h.Export()
}

// latency is a concurrent histogram of durations in microseconds, from 1 µs to 5 minutes.
type latency struct {
	mu sync.Mutex
	h  *hdrhistogram.Histogram
}

func newLatency() *latency { return &latency{h: hdrhistogram.New(1, 300_000_000, 3)} }

func (l *latency) record(d time.Duration) {
	l.mu.Lock()
	_ = l.h.RecordValue(max(d.Microseconds(), 1))
	l.mu.Unlock()
}

func (l *latency) snapshot() *hdrhistogram.Snapshot {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.h.TotalCount() == 0 {
		return nil
	}
	return l.h.Export()
}

// percentileMs is the q-th percentile of what l recorded, in milliseconds; nil when l recorded
// nothing.
func (l *latency) percentileMs(q float64) *float64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.h.TotalCount() == 0 {
		return nil
	}
	v := float64(l.h.ValueAtQuantile(q)) / 1000
	return &v
}

// loadCounters are the live counters of one load process.
type loadCounters struct {
	attempted, connected, connectFailed, refused, dropped, subRefused atomic.Int64
	sent, sentQoS1, acked, pubErrors, received, errors                atomic.Int64

	connectLatency, ackLatency *latency

	errMu    sync.Mutex
	firstErr string
}

func (s *loadCounters) init() { s.connectLatency, s.ackLatency = newLatency(), newLatency() }

func (s *loadCounters) setError(err error) {
	s.errors.Add(1)
	s.errMu.Lock()
	if s.firstErr == "" {
		s.firstErr = err.Error()
	}
	s.errMu.Unlock()
}

// loadEngine runs one load process's cars.
type loadEngine struct {
	job    loadJob
	stats  loadCounters
	source []net.IP
	tls    *tls.Config // nil: plain TCP

	mu   sync.Mutex
	cars []*carConn // by index in job.Creds; nil until connected
	next int        // the first car not yet asked to connect

	plan    atomic.Pointer[publishPlan] // nil: not publishing
	writing atomic.Int64                // publish writes in progress
	wake    atomic.Pointer[chan struct{}]
	stop    chan struct{}
	drivers sync.WaitGroup
}

// publishPlan is what every car publishes until the next plan.
type publishPlan struct {
	rate  float64 // per car, messages/s; negative: as fast as possible
	qos   byte
	start time.Time
}

func newLoadEngine(job loadJob) (*loadEngine, error) {
	if job.Inflight <= 0 {
		job.Inflight = 32
	}
	if job.ConnectConcurrency <= 0 {
		job.ConnectConcurrency = 256
	}
	if job.ConnectTimeout <= 0 {
		job.ConnectTimeout = 10 * time.Second
	}
	e := &loadEngine{job: job, cars: make([]*carConn, len(job.Creds)), stop: make(chan struct{})}
	e.stats.init()
	if job.CAPEM != "" {
		cfg, err := tlsconf.ClientConfigPEM([]byte(job.CAPEM))
		if err != nil {
			return nil, err
		}
		host, _, _ := net.SplitHostPort(job.Broker)
		cfg.ServerName = host
		// No ClientSessionCache: every car makes a full handshake, as a fleet of devices does.
		e.tls = cfg
	}
	for _, s := range job.SourceIPs {
		ip := net.ParseIP(s)
		if ip == nil {
			return nil, fmt.Errorf("source address %q is not an IP address", s)
		}
		e.source = append(e.source, ip)
	}
	w := make(chan struct{})
	e.wake.Store(&w)
	return e, nil
}

// counters snapshots the totals; final adds the histograms.
func (e *loadEngine) counters(final bool) Counters {
	s := &e.stats
	c := Counters{
		Attempted: s.attempted.Load(), Connected: s.connected.Load(), ConnectFailed: s.connectFailed.Load(),
		Refused: s.refused.Load(), Dropped: s.dropped.Load(), SubRefused: s.subRefused.Load(),
		Sent: s.sent.Load(), SentQoS1: s.sentQoS1.Load(), Acked: s.acked.Load(), PubErrors: s.pubErrors.Load(),
		Received: s.received.Load(), Errors: s.errors.Load(), Final: final,
	}
	s.errMu.Lock()
	c.FirstError = s.firstErr
	s.errMu.Unlock()
	if final {
		c.ConnectLatency = s.connectLatency.snapshot()
		c.AckLatency = s.ackLatency.snapshot()
	}
	return c
}

// do executes one instruction; connect and quiet return when done.
func (e *loadEngine) do(ctx context.Context, o op) error {
	switch o.Op {
	case opConnect:
		e.connect(ctx, o.Upto)
	case opPublish:
		if o.QoS > 1 {
			return fmt.Errorf("qos %d: the bench publishes at QoS 0 or 1", o.QoS)
		}
		e.setPlan(&publishPlan{rate: o.Rate, qos: o.QoS, start: time.Now()})
	case opQuiet:
		e.setPlan(nil)
		e.awaitAcks(ctx)
	case opStop:
		e.shutdown()
	default:
		return fmt.Errorf("unknown op %q", o.Op)
	}
	return nil
}

// connect connects cars [next, upto) at the job's rate, at most ConnectConcurrency handshakes
// at once, and returns when every one has connected or failed.
func (e *loadEngine) connect(ctx context.Context, upto int) {
	e.mu.Lock()
	from := e.next
	upto = min(max(upto, from), len(e.job.Creds))
	e.next = upto
	e.mu.Unlock()

	idx := make(chan int)
	var wg sync.WaitGroup
	for range min(e.job.ConnectConcurrency, upto-from) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range idx {
				e.connectOne(ctx, i)
			}
		}()
	}
	start := time.Now()
	rate := e.job.ConnectRate
feed:
	for k, i := 0, from; i < upto; k, i = k+1, i+1 {
		if rate > 0 {
			// Car k is due k/rate after the start; sleep only when ahead of that.
			if wait := time.Until(start.Add(time.Duration(float64(k) / rate * float64(time.Second)))); wait > time.Millisecond {
				t := time.NewTimer(wait)
				select {
				case <-t.C:
				case <-ctx.Done():
					t.Stop()
					break feed
				}
			}
		}
		select {
		case idx <- i:
		case <-ctx.Done():
			break feed
		}
	}
	close(idx)
	wg.Wait()
}

func (e *loadEngine) connectOne(ctx context.Context, i int) {
	e.stats.attempted.Add(1)
	var src net.IP
	if len(e.source) > 0 {
		src = e.source[(e.job.FirstIndex+i)%len(e.source)]
	}
	c, took, err := dialCar(ctx, e.job.Broker, src, e.tls, e.job.Creds[i], e.job.KeepAlive, e.job.ConnectTimeout, e.job.Inflight, &e.stats)
	if err != nil {
		if errors.Is(err, errRefused) {
			e.stats.refused.Add(1)
		} else {
			e.stats.connectFailed.Add(1)
		}
		e.stats.setError(fmt.Errorf("car %s: %w", e.job.Creds[i].VIN, err))
		return
	}
	e.stats.connectLatency.record(took)
	e.stats.connected.Add(1)
	e.mu.Lock()
	stopped := e.isStopped()
	if !stopped {
		e.cars[i] = c
		e.drivers.Add(1)
	}
	e.mu.Unlock()
	if stopped {
		c.close()
		e.stats.connected.Add(-1)
		return
	}
	go e.drive(c)
}

func (e *loadEngine) isStopped() bool {
	select {
	case <-e.stop:
		return true
	default:
		return false
	}
}

// setPlan switches every car to plan and wakes them.
func (e *loadEngine) setPlan(p *publishPlan) {
	e.plan.Store(p)
	w := make(chan struct{})
	old := e.wake.Swap(&w)
	close(*old)
}

// awaitAcks waits until no publish is being written and every QoS 1 publish was
// acknowledged (or quietTimeout).
func (e *loadEngine) awaitAcks(ctx context.Context) {
	deadline := time.Now().Add(quietTimeout)
	for (e.writing.Load() > 0 || e.stats.acked.Load() < e.stats.sentQoS1.Load()) && time.Now().Before(deadline) && ctx.Err() == nil {
		time.Sleep(10 * time.Millisecond)
	}
}

// drive is a car's writer: telemetry per the current plan, and a PINGREQ when nothing else
// was written for half the keep-alive.
func (e *loadEngine) drive(c *carConn) {
	defer e.drivers.Done()
	var (
		plan    *publishPlan
		inPlan  int64         // messages sent under plan
		phase   time.Duration // this car's offset in the plan's schedule, so cars do not publish in lockstep
		buf     = make([]byte, 0, 2048)
		payload = make([]byte, 0, 512)
		timer   = time.NewTimer(time.Hour)
	)
	defer timer.Stop()
	for {
		wake := *e.wake.Load()
		if p := e.plan.Load(); p != plan {
			plan, inPlan, phase = p, 0, 0
			if p != nil && p.rate > 0 {
				phase = time.Duration(rand.Float64() * float64(time.Second) / p.rate)
			}
		}
		now := time.Now()
		next := now.Add(time.Hour)
		if plan != nil {
			var due int64
			if plan.rate < 0 {
				due = maxBatch
			} else if since := now.Sub(plan.start) - phase; since >= 0 {
				due = int64(since.Seconds()*plan.rate) + 1 - inPlan
			}
			if due > 0 {
				n, err := e.publish(c, plan.qos, int(min(due, maxBatch)), &buf, &payload)
				inPlan += int64(n)
				if err != nil {
					return
				}
			}
			if plan.rate < 0 {
				select {
				case <-e.stop:
					return
				case <-c.dead:
					return
				default:
					continue
				}
			}
			next = plan.start.Add(phase + time.Duration(float64(inPlan)/plan.rate*float64(time.Second)))
		}
		if ka := e.job.KeepAlive; ka > 0 {
			pingAt := time.Unix(0, c.lastWrite.Load()).Add(ka / 2)
			if !now.Before(pingAt) {
				if err := c.write([]byte{0xC0, 0}); err != nil { // PINGREQ
					return
				}
				pingAt = now.Add(ka / 2)
			}
			if pingAt.Before(next) {
				next = pingAt
			}
		}
		timer.Reset(time.Until(next))
		select {
		case <-timer.C:
		case <-wake:
		case <-c.dead:
			return
		case <-e.stop:
			return
		}
	}
}

// publish writes up to n telemetry messages in one system call. At QoS 1 it waits for a free
// window slot for the first and takes only free slots for the rest.
func (e *loadEngine) publish(c *carConn, qos byte, n int, buf, payload *[]byte) (int, error) {
	e.writing.Add(1)
	defer e.writing.Add(-1)
	if e.plan.Load() == nil {
		return 0, nil // quiet began after the driver looked
	}
	b := (*buf)[:0]
	nowMs := time.Now().UnixMilli()
	count := 0
	for count < n {
		var id uint16
		if qos > 0 {
			var ok bool
			if id, ok = c.takeID(count == 0, e.stop); !ok {
				break
			}
		}
		c.seq++
		*payload = appendTelemetry((*payload)[:0], nowMs, c.seq)
		b = appendPublish(b, c.telemetryTopic, qos, false, id, *payload)
		count++
	}
	*buf = b
	if count == 0 {
		if e.isStopped() {
			return 0, errors.New("stopped")
		}
		return 0, nil
	}
	if err := c.write(b); err != nil {
		e.stats.pubErrors.Add(int64(count))
		if !c.closing.Load() {
			e.stats.setError(fmt.Errorf("car %s: publish: %w", c.vin, err))
		}
		return 0, err
	}
	e.stats.sent.Add(int64(count))
	if qos > 0 {
		e.stats.sentQoS1.Add(int64(count))
	}
	return count, nil
}

// shutdown stops the drivers and disconnects every car.
func (e *loadEngine) shutdown() {
	e.mu.Lock()
	if e.isStopped() {
		e.mu.Unlock()
		return
	}
	close(e.stop)
	cars := e.cars
	e.mu.Unlock()
	// Disconnect in parallel: one DISCONNECT and close per car.
	var wg sync.WaitGroup
	ch := make(chan *carConn)
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for c := range ch {
				c.close()
			}
		}()
	}
	for _, c := range cars {
		if c != nil {
			ch <- c
		}
	}
	close(ch)
	wg.Wait()
	e.drivers.Wait()
}
