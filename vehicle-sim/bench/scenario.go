package bench

import (
	"context"
	"fmt"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"

	"telematics/pkg/api"
)

// runner runs one scenario against one system under test.
type runner struct {
	cfg   Config
	mode  string
	round int
	bins  binaries
	env   Env
}

func (r *runner) logf(format string, args ...any) {
	fmt.Fprintf(r.env.Stderr, "[%s] "+format+"\n", append([]any{r.mode}, args...)...)
}

// startSUT starts the system under test for this run and says so; the caller closes it.
func (r *runner) startSUT(ctx context.Context) (*sut, error) {
	start := time.Now()
	s, err := startSUT(ctx, r.cfg, r.mode, r.bins, r.env.Stderr)
	if err != nil {
		return nil, fmt.Errorf("start the system under test: %w", err)
	}
	r.logf("system under test up in %.1fs (MQTT %s, HTTP %s)%s", time.Since(start).Seconds(), s.mqttAddr, s.gatewayURL, keptDir(s))
	return s, nil
}

func (r *runner) run(ctx context.Context) (res Result, err error) {
	cfg := r.cfg
	res = Result{Scenario: cfg.Scenario, Broker: r.mode, Round: r.round, Cars: cfg.Cars}
	if r.mode == ModeTarget {
		res.Broker = cfg.Broker
	}
	if r.mode == ModeCluster {
		res.Broker = fmt.Sprintf("cluster-%d", cfg.Replicas) // its replicas, on etcd
	}
	res.HostLoad[0] = loadAverage()
	s, err := r.startSUT(ctx)
	if err != nil {
		return res, err
	}
	defer func() {
		if cerr := s.close(); cerr != nil && err == nil {
			err = cerr
		}
	}()

	setup := time.Now()
	creds, err := s.provision(ctx, cfg.Cars, func(n int) {
		if cfg.Cars > provisionBatch {
			r.logf("provisioned %d/%d cars", n, cfg.Cars)
		}
	})
	if err != nil {
		return res, err
	}
	if s.mosq != nil {
		if err := s.mosq.allow(ctx, creds); err != nil {
			return res, err
		}
	}
	if keyScenario(cfg.Scenario) {
		res.KeyResult = &KeyResult{}
		return res, r.runKeys(ctx, s, creds, setup, &res)
	}
	res.RatePerCar, res.QoS = cfg.Rate, cfg.QoS
	f, err := startFleet(ctx, cfg, r.env, s.mqttAddr, s.caPEM, creds)
	if err != nil {
		return res, err
	}
	defer func() {
		if f.procs != nil {
			_, _ = f.stop()
		}
	}()
	res.LoadProcs = len(f.procs)

	rtBase := s.goRuntimes(ctx, true) // before any car: the heap after a collection
	connectWin, err := s.openWindow(ctx)
	if err != nil {
		return res, err
	}
	defer connectWin.abort()
	base := connectWin.proc
	loaderCPU0, loader0 := f.loaderCPU(), time.Now()

	// Connect, in steps, with memory measured after each.
	var (
		steps   []StepResult
		samples [][]procSample
		lastCPU = base
	)
	for step := 1; step <= cfg.Steps; step++ {
		target := cfg.Cars * step / cfg.Steps
		before := f.counters()
		t0 := time.Now()
		if err := f.connect(target); err != nil {
			return res, err
		}
		err := f.wait(ctx, func() error {
			c := f.counters()
			return r.progressConnect(s, c, target, before, t0)
		})
		if err != nil {
			return res, err
		}
		took := time.Since(t0)
		res.ConnectS += took.Seconds()
		if err := r.settle(ctx, s); err != nil {
			return res, err
		}
		smp, err := s.sample()
		if err != nil {
			return res, err
		}
		c := f.counters()
		st := StepResult{Connected: c.Connected, ConnectS: took.Seconds(), RSSKB: map[string]int64{}}
		for i, p := range s.procs {
			st.RSSKB[p.role] = smp[i].RSSKB
		}
		steps = append(steps, st)
		samples = append(samples, smp)
		r.logf("step %d/%d: %d cars connected in %.1fs%s", step, cfg.Steps, c.Connected, took.Seconds(), memLine(s, smp))
		lastCPU = smp
	}
	res.Steps = steps
	connectCounts, _, err := connectWin.close(ctx)
	if err != nil {
		return res, err
	}
	rtCars := s.goRuntimes(ctx, true)
	// At rest: every car connected, nothing sent.
	idleWin, err := s.openWindow(ctx)
	if err != nil {
		return res, err
	}
	defer idleWin.abort()
	if err := r.settle(ctx, s); err != nil {
		return res, err
	}
	idleCounts, _, err := idleWin.close(ctx)
	if err != nil {
		return res, err
	}
	connected := f.counters()
	res.Connected = connected.Connected
	if res.ConnectS > 0 {
		res.ConnectPerS = float64(connected.Attempted-connected.ConnectFailed-connected.Refused) / res.ConnectS
	}
	res.DurationS = res.ConnectS
	cpuFrom := base // the CPU of the measured phase: connecting, or publishing

	// Publish.
	var pub *publishOutcome
	if cfg.Rate != 0 && cfg.Duration > 0 {
		if pub, err = r.publish(ctx, s, f); err != nil {
			return res, err
		}
		cpuFrom, lastCPU = pub.cpuFrom, pub.cpuTo
	}
	end, err := s.sample()
	if err != nil {
		return res, err
	}
	loaderCPU1, loader1 := f.loaderCPU(), time.Now()
	res.HostLoad[1] = loadAverage()
	final, stopErr := f.stop()
	if err := s.checkAlive(); err != nil {
		return res, err
	}

	// Results.
	res.LoaderCPUPct = 100 * float64(loaderCPU1-loaderCPU0) / float64(loader1.Sub(loader0))
	res.ConnectFailed, res.Refused = final.ConnectFailed, final.Refused
	res.Errors = final.ConnectFailed + final.Refused + final.Dropped + final.PubErrors + final.SubRefused
	res.FirstError = final.FirstError
	if stopErr != nil {
		res.Errors++
		if res.FirstError == "" {
			res.FirstError = stopErr.Error()
		}
	}
	hist, what := final.ConnectLatency, "connect"
	if pub != nil {
		res.DurationS = pub.window.Seconds()
		res.Sent, res.Acked, res.Received = pub.sent, pub.acked, pub.received
		res.SentPerS, res.MsgsPerS = pub.sentPerS, pub.msgsPerS
		res.ReceivedAfterWindow = max(0, pub.received-pub.receivedInWindow)
		res.Lost, res.GatewayLost = pub.lost, pub.gatewayLost
		if cfg.Scenario == ScenarioTelemetry {
			// The connect latency of a telemetry run is not its subject; PUBACKs are, at QoS 1.
			hist, what = nil, ""
			if cfg.QoS == 1 {
				hist, what = final.AckLatency, "puback"
			}
		}
	}
	if hist != nil {
		h := hdrhistogram.Import(hist)
		ms := func(us int64) *float64 { v := float64(us) / 1000; return &v }
		res.Latency = what
		res.P50Ms, res.P99Ms, res.MaxMs = ms(h.ValueAtQuantile(50)), ms(h.ValueAtQuantile(99)), ms(h.Max())
	}
	for i, p := range s.procs {
		pr := ProcResult{Role: p.role, PID: p.pid, RSSKBBase: base[i].RSSKB, RSSKB: end[i].RSSKB, AnonKB: end[i].AnonKB,
			HWMKB: end[i].HWMKB, CPUPct: cpuPercent(cpuFrom[i], lastCPU[i])}
		last := samples[len(samples)-1][i]
		if res.Connected > 0 {
			pr.KBPerCar = kbPer(last.RSSKB-base[i].RSSKB, res.Connected)
		}
		if n := len(steps); n >= 2 && steps[n-1].Connected > steps[n-2].Connected {
			pr.SlopeKB = kbPer(last.RSSKB-samples[n-2][i].RSSKB, steps[n-1].Connected-steps[n-2].Connected)
		}
		if pub != nil && res.Connected > 0 {
			pr.KBPerCarEnd = kbPer(end[i].RSSKB-base[i].RSSKB, res.Connected)
		}
		if pub != nil && pub.receivedInWindow > 0 {
			us := float64((lastCPU[i].CPU - cpuFrom[i].CPU).Microseconds()) / float64(pub.receivedInWindow)
			pr.CPUUsPerMsg = &us
		}
		pr.setPerCar(rtBase[i], rtCars[i], res.Connected)
		pr.setIdle(idleCounts[i])
		if pub != nil {
			res.OpUnit = "message"
			pr.setPerOp(pub.counts[i], pub.receivedInWindow)
		} else {
			res.OpUnit = "connect"
			pr.setPerOp(connectCounts[i], res.Connected)
		}
		res.Processes = append(res.Processes, pr)
		if p.holdsBroker {
			res.BrokerKBPerCar, res.BrokerSlopeKBPerCar, res.BrokerKBPerCarEnd = pr.KBPerCar, pr.SlopeKB, pr.KBPerCarEnd
		}
		if p.holdsGateway && !p.holdsBroker {
			res.GatewayKBPerCar, res.GatewaySlopeKBPerCar, res.GatewayKBPerCarEnd = pr.KBPerCar, pr.SlopeKB, pr.KBPerCarEnd
		}
	}
	r.logf("done: %d connected, %d errors", res.Connected, res.Errors)
	return res, nil
}

func kbPer(kb, n int64) *float64 {
	v := float64(kb) / float64(n)
	return &v
}

func keptDir(s *sut) string {
	if s.keepDir && s.dir != "" {
		return ", files in " + s.dir
	}
	return ""
}

// settle waits cfg.Settle so that memory is measured at rest, not mid-allocation.
func (r *runner) settle(ctx context.Context, s *sut) error {
	t := time.NewTimer(r.cfg.Settle)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
	}
	return s.checkAlive()
}

func (r *runner) progressConnect(s *sut, c Counters, target int, before Counters, t0 time.Time) error {
	if err := s.checkAlive(); err != nil {
		return err
	}
	smp, _ := s.sample()
	rate := float64(c.Attempted-before.Attempted) / time.Since(t0).Seconds()
	r.logf("connect: %d/%d connected, %d failed, %d refused (%.0f/s)%s", c.Connected, target,
		c.ConnectFailed, c.Refused, rate, memLine(s, smp))
	return nil
}

// memLine describes the processes' memory (and CPU, given a previous sample).
func memLine(s *sut, smp []procSample) string {
	if len(smp) != len(s.procs) {
		return ""
	}
	line := ""
	for i, p := range s.procs {
		line += fmt.Sprintf(" | %s %.0f MB", p.role, float64(smp[i].RSSKB)/1024)
	}
	return line
}

// publishOutcome is what the publishing phase measured.
type publishOutcome struct {
	window                time.Duration
	sent, acked, received int64
	receivedInWindow      int64 // what the CPU figures are divided by
	sentPerS, msgsPerS    float64
	lost, gatewayLost     int64
	cpuFrom, cpuTo        []procSample
	counts                []windowCounts // per process of the system under test, over the window
}

// drainIdle is how long the gateway's count may stand still before the bench stops waiting
// for messages still on their way.
const drainIdle = 3 * time.Second

// publish has every car publish for cfg.Duration, then counts what reached the twin.
func (r *runner) publish(ctx context.Context, s *sut, f *fleet) (*publishOutcome, error) {
	cfg := r.cfg
	st0, err := s.stats(ctx)
	if err != nil {
		return nil, err
	}
	c0 := f.counters()
	win, err := s.openWindow(ctx)
	if err != nil {
		return nil, err
	}
	defer win.abort()
	cpu0 := win.proc
	t0 := time.Now()
	if err := f.send(op{Op: opPublish, Rate: cfg.Rate, QoS: byte(cfg.QoS)}); err != nil {
		return nil, err
	}
	prevT, prevSent, prevRecv := t0, c0.Sent, st0.TelemetryReceived
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	deadline := time.NewTimer(cfg.Duration)
	defer deadline.Stop()
loop:
	for {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-deadline.C:
			break loop
		case now := <-tick.C:
			if err := s.checkAlive(); err != nil {
				return nil, err
			}
			st, err := s.stats(ctx)
			if err != nil {
				return nil, err
			}
			c := f.counters()
			dt := now.Sub(prevT).Seconds()
			smp, _ := s.sample()
			r.logf("telemetry %.0fs/%.0fs: sent %d (%.0f/s), into the twin %.0f/s, gaps %d, errors %d%s",
				now.Sub(t0).Seconds(), cfg.Duration.Seconds(), c.Sent-c0.Sent, float64(c.Sent-prevSent)/dt,
				float64(st.TelemetryReceived-prevRecv)/dt, st.TelemetryLost-st0.TelemetryLost, c.Errors, memLine(s, smp))
			prevT, prevSent, prevRecv = now, c.Sent, st.TelemetryReceived
		}
	}
	window := time.Since(t0)
	stW, err := s.stats(ctx)
	if err != nil {
		return nil, err
	}
	counts, cpu1, err := win.close(ctx)
	if err != nil {
		return nil, err
	}
	cW := f.counters()
	// Stop publishing, wait for outstanding PUBACKs, then for the gateway to take what is on its
	// way.
	if err := f.send(op{Op: opQuiet}); err != nil {
		return nil, err
	}
	if err := f.wait(ctx, func() error { return s.checkAlive() }); err != nil {
		return nil, err
	}
	c1 := f.counters()
	expected := c1.Sent - c0.Sent
	if cfg.QoS == 1 {
		expected = c1.Acked - c0.Acked
	}
	st1, err := r.drain(ctx, s, st0.TelemetryReceived+uint64(expected))
	if err != nil {
		return nil, err
	}
	o := &publishOutcome{
		window: window, sent: c1.Sent - c0.Sent, acked: c1.Acked - c0.Acked,
		received: int64(st1.TelemetryReceived - st0.TelemetryReceived), gatewayLost: int64(st1.TelemetryLost - st0.TelemetryLost),
		sentPerS:         float64(cW.Sent-c0.Sent) / window.Seconds(),
		msgsPerS:         float64(stW.TelemetryReceived-st0.TelemetryReceived) / window.Seconds(),
		receivedInWindow: int64(stW.TelemetryReceived - st0.TelemetryReceived),
		cpuFrom:          cpu0, cpuTo: cpu1, counts: counts,
	}
	o.lost = max(0, expected-o.received)
	return o, nil
}

// drain waits until the gateway counted want messages, or its count stood still for drainIdle.
func (r *runner) drain(ctx context.Context, s *sut, want uint64) (api.Stats, error) {
	var (
		last      api.Stats
		lastMoved = time.Now()
	)
	for {
		st, err := s.stats(ctx)
		if err != nil {
			return st, err
		}
		if st.TelemetryReceived >= want {
			return st, nil
		}
		if st.TelemetryReceived != last.TelemetryReceived {
			last, lastMoved = st, time.Now()
		}
		if time.Since(lastMoved) > drainIdle {
			return st, nil
		}
		select {
		case <-ctx.Done():
			return st, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}
