package bench

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
	"golang.org/x/sync/errgroup"

	"telematics/pkg/phone"
	"telematics/pkg/protocol"
)

// maxCommandsWindow keeps a commands run inside the owners' 2FA step-up (twofa.step_up_ttl,
// 5 minutes by default), which begins with each owner's TOTP-authorized command.
const maxCommandsWindow = 4 * time.Minute

// maxInflight bounds the commands (or local exchanges) awaiting an answer: beyond it the
// system under test is far behind and further sends are counted, not made.
const maxInflight = 50_000

// Segments of a command's round trip, from the phone's clocks and the replies' timestamps
// (one machine, one clock): the phone sends → the gateway decided and audited (the accepted
// reply's ts) → the car took the command up (the terminal reply's car_ts: the car's Result.ts,
// stamped when it starts verifying) → the gateway relayed the car's result (the terminal reply's
// ts, after its audit write) → the phone has the terminal reply.
var segmentNames = []string{
	"app → gateway decision",
	"decision → car",
	"car → gateway relay",
	"relay → app",
}

// cmdStats are what the commands' goroutines record.
type cmdStats struct {
	total    *latency
	segs     [4]*latency
	segSumUs [4]atomic.Int64
	segN     atomic.Int64

	accepted, executed atomic.Int64
	errs               errorCounts
}

// runCommands connects a phone app per owner (one MQTT session each: the 2FA step-up belongs
// to the session), has every owner send one TOTP-authorized command to one of its cars (the
// step-up), then sends signed commands at cfg.Rate per second over all cars for cfg.Duration,
// each from its car's owner's app. With --owners an app has commands to many cars in flight
// at once: pkg/phone's App.Send is safe for concurrent use and follows each command's replies
// by its id.
func runCommands(ctx context.Context, w *keyWorld, m *measure, res *Result) error {
	r, cfg := w.r, w.r.cfg
	if cfg.Owners > 0 {
		// Only one car per owner gets a step-up before the window: the others must hold their
		// owner's key before it opens.
		if err := w.waitCars(ctx, "acknowledged their whitelists", 2*time.Minute+time.Duration(len(w.creds))*10*time.Millisecond, synced); err != nil {
			return err
		}
	}
	if err := w.allowApps(ctx, w.owners); err != nil {
		return err
	}
	apps := make([]*phone.App, len(w.owners))
	defer func() {
		for _, a := range apps {
			if a != nil {
				a.Close()
			}
		}
	}()
	broker := "tcp://" + w.s.mqttAddr
	var stepUps atomic.Int64
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(cfg.SetupConcurrency)
	for i, p := range w.owners {
		g.Go(func() error {
			app, err := phone.ConnectWith(gctx, p.sess, phone.ConnectOptions{BrokerURL: broker, Key: p.key})
			if err != nil {
				return fmt.Errorf("%s's app connects: %w", p.name, err)
			}
			apps[i] = app
			code, err := p.code()
			if err != nil {
				return err
			}
			rep, err := app.Send(gctx, phone.Request{VIN: p.vin, Action: protocol.ActionUnlock, TOTP: code}, nil)
			if err != nil {
				return fmt.Errorf("%s's TOTP-authorized unlock: %w", p.name, err)
			}
			if rep.Status != protocol.ReplyExecuted {
				return fmt.Errorf("%s's TOTP-authorized unlock: %s %s", p.name, rep.Status, rep.Reason)
			}
			stepUps.Add(1)
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	res.StepUps = int(stepUps.Load())
	actions := defaultActions(cfg)
	res.Actions = actionNames(actions)
	res.RateTarget = cfg.Rate
	r.logf("%d owners' apps connected, each elevated by one TOTP-authorized unlock; %g commands/s over %d cars for %s (%v)",
		len(apps), cfg.Rate, len(w.creds), cfg.Duration, res.Actions)

	st := &cmdStats{total: newLatency()}
	for i := range st.segs {
		st.segs[i] = newLatency()
	}
	lag := newLatency()
	n := len(w.creds)
	// The cars and apps connected and quiet: what the system under test does at rest.
	if err := m.quiet(ctx, cfg.Settle); err != nil {
		return err
	}
	if err := m.begin(ctx); err != nil {
		return err
	}
	res.SetupS = time.Since(m.setupStart).Seconds()
	stopProgress := progress(ctx, r, func() string {
		return fmt.Sprintf("commands: %d executed, %d errors", st.executed.Load(), sumCounts(st.errs.snapshot()))
	})
	made, skipped, window := paced(ctx, cfg.Rate, cfg.Duration, maxInflight, lag, func(k int) {
		i := k % n // the car; its owner's app sends
		action := actions[(k/n)%len(actions)]
		sendOne(ctx, apps[w.carOwner[i]], w.creds[i].VIN, action, st)
	})
	stopProgress()
	if err := m.end(ctx); err != nil {
		return err
	}
	if skipped > 0 {
		st.errs.addN("bench_backlog", skipped) // more than maxInflight awaited answers
	}
	res.DurationS = window.Seconds()
	res.Commands = made
	res.Accepted, res.Executed = st.accepted.Load(), st.executed.Load()
	res.CommandsPerS = float64(made) / window.Seconds()
	res.ExecutedPerS = float64(res.Executed) / window.Seconds()
	res.ErrorsByReason, res.FirstError = st.errs.snapshot(), st.errs.firstError()
	res.DispatchLagP99Ms = lag.percentileMs(99)
	setPercentiles(res, "send → executed reply", st.total)
	if nSeg := st.segN.Load(); nSeg > 0 {
		for i, name := range segmentNames {
			h := hdrhistogram.Import(st.segs[i].snapshot())
			res.Split = append(res.Split, Segment{Name: name,
				MeanMs: float64(st.segSumUs[i].Load()) / float64(nSeg) / 1000,
				P50Ms:  float64(h.ValueAtQuantile(50)) / 1000, P99Ms: float64(h.ValueAtQuantile(99)) / 1000})
		}
	}
	return nil
}

// sendOne sends one command and records its round trip.
func sendOne(ctx context.Context, app *phone.App, vin string, action protocol.Action, st *cmdStats) {
	var accTs int64
	t0 := time.Now()
	rep, err := app.Send(ctx, phone.Request{VIN: vin, Action: action}, func(r protocol.Reply) {
		if r.Status == protocol.ReplyAccepted {
			accTs = r.TsMs
		}
	})
	t1 := time.Now()
	if accTs != 0 {
		st.accepted.Add(1) // the decision was in the audit log before the command went out
	}
	switch {
	case err != nil:
		st.errs.addErr(err)
		return
	case rep.Status != protocol.ReplyExecuted:
		reason := string(rep.Reason)
		if reason == "" {
			reason = rep.Status
		}
		st.errs.add(reason)
		return
	}
	st.executed.Add(1)
	st.total.record(t1.Sub(t0))
	if accTs == 0 || rep.CarTsMs == 0 || rep.TsMs == 0 {
		return // a gateway without car_ts: no split
	}
	// Replies carry milliseconds: each stamp is taken as the middle of its millisecond, so the
	// four segments add up to the round trip and their means are unbiased (each single value
	// is ±0.5 ms).
	send, recv := t0.UnixMicro(), t1.UnixMicro()
	acc, car, relay := accTs*1000+500, rep.CarTsMs*1000+500, rep.TsMs*1000+500
	for i, us := range [4]int64{acc - send, car - acc, relay - car, recv - relay} {
		st.segSumUs[i].Add(us)
		st.segs[i].record(time.Duration(max(us, 0)) * time.Microsecond)
	}
	st.segN.Add(1)
}

// progress logs line() every 5 s until the returned function is called.
func progress(ctx context.Context, r *runner, line func() string) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(5 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-ctx.Done():
				return
			case <-t.C:
				r.logf("%s", line())
			}
		}
	}()
	return func() { close(done); wg.Wait() }
}

func sumCounts(m map[string]int64) int64 {
	var n int64
	for _, v := range m {
		n += v
	}
	return n
}

// defaultActions are the actions the owners cycle through: unlock needs a code, which the
// owner's step-up (the TOTP-authorized unlock before the window) covers for twofa.step_up_ttl,
// behind every broker (the app's MQTT session with the embedded one, its phone key behind
// another).
func defaultActions(cfg Config) []protocol.Action {
	names := cfg.Actions
	if len(names) == 0 {
		names = []string{"unlock", "lock"}
	}
	out := make([]protocol.Action, len(names))
	for i, n := range names {
		out[i] = protocol.Action(n)
	}
	return out
}

func actionNames(as []protocol.Action) []string {
	out := make([]string, len(as))
	for i, a := range as {
		out[i] = string(a)
	}
	return out
}
