package bench

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"telematics/pkg/api"
	"telematics/pkg/phone"
	"telematics/pkg/protocol"
	"telematics/pkg/sign"
)

// The failover drill, `vehicle-sim drill failover`: the gateway as a cluster (ModeCluster:
// etcd, the standalone broker, N replicas as processes), real cars with owners who enrolled TOTP
// and paired phone keys, a steady load of signed cloud commands; one replica is killed with
// SIGKILL a third into the load and started again at two thirds. Every request must get exactly
// one terminal reply, no car may execute a request twice, and the writes the killed replica
// acknowledged just before it died must be on every replica afterwards. It lives in the bench
// because it is the bench's machinery (processes, cars, owners, paced load) with a kill in it,
// and vehicle-sim must not link the gateway: it drives the gateway binaries as processes.

// FailoverOptions configure RunFailover.
type FailoverOptions struct {
	Replicas int
	Store    string // StoreEtcd, or StoreBbolt with one replica (killed and restarted on its file)
	Cars     int
	Rate     float64       // requests per second over all cars
	Duration time.Duration // of the load; the kill comes at a third, the restart at two thirds
	Actions  []string      // each car's owner cycles through them; default lock,flash (no code needed)
	// Writes is how many acknowledged key changes the victim makes just before it dies
	// (default: one per car, at most 20).
	Writes int

	Src, GatewayBin, BrokerBin string
	GatewayEnv                 []string
	KeepDir                    bool
	// Progress receives a line per step; nil discards.
	Progress io.Writer
}

// failoverGrace is how long after a request's expiry the drill waits for its terminal reply:
// the gateway's result_grace (1 s by default) and a margin for a loaded machine.
const failoverGrace = 5 * time.Second

// failoverLinger is how long the drill listens after the last request settled, for late
// duplicates.
const failoverLinger = 2 * time.Second

// victimIndex is the replica killed: the first, which the owners' logins, pairings and the
// writes before the kill went through.
const victimIndex = 0

// RunFailover runs the drill. The error says why the drill could not run (ErrNoStoreFlag
// among others); a drill that ran reports what it found in the report, with OK.
func RunFailover(ctx context.Context, o FailoverOptions) (rep FailoverReport, err error) {
	start := time.Now()
	if o.Progress == nil {
		o.Progress = io.Discard
	}
	if len(o.Actions) == 0 {
		o.Actions = []string{string(protocol.ActionLock), string(protocol.ActionFlash)}
	}
	if o.Writes == 0 {
		o.Writes = min(o.Cars, 20)
	}
	rep = FailoverReport{Replicas: o.Replicas, Store: o.Store, Cars: o.Cars, Rate: o.Rate, Actions: o.Actions}
	defer func() { rep.DurationMs = time.Since(start).Milliseconds() }()
	cfg := Config{Scenario: ScenarioCommands, Cars: o.Cars, Rate: o.Rate, Duration: o.Duration, Actions: o.Actions,
		Broker: ModeStandalone, Store: o.Store, Replicas: o.Replicas, Rounds: 1, Steps: 1,
		SetupConcurrency: 8, Concurrency: 1, ConnectConcurrency: 64, ConnectTimeout: 10 * time.Second,
		KeepAlive: 60 * time.Second, Inflight: 32, CarsPerProc: defaultCarsPerProc,
		Src: o.Src, GatewayBin: o.GatewayBin, BrokerBin: o.BrokerBin, GatewayEnv: o.GatewayEnv, KeepDir: o.KeepDir}
	if err := o.validate(); err != nil {
		return rep, err
	}
	r := &runner{cfg: cfg, mode: ModeCluster, round: 1, env: Env{Stderr: o.Progress}}
	binDir, err := os.MkdirTemp("", "vehicle-sim-drill-bin-")
	if err != nil {
		return rep, err
	}
	defer os.RemoveAll(binDir)
	if r.bins, err = buildBinaries(ctx, cfg, binDir, []string{ModeCluster}, o.Progress); err != nil {
		return rep, err
	}
	s, err := r.startSUT(ctx)
	if err != nil {
		return rep, err
	}
	defer func() {
		if cerr := s.close(); cerr != nil && err == nil {
			err = cerr
		}
	}()
	if s.etcd != nil {
		rep.Etcd = s.etcd.Mode()
	}
	rep.Victim = s.replicas[victimIndex].name

	creds, err := s.provision(ctx, o.Cars, nil)
	if err != nil {
		return rep, err
	}
	id := make([]byte, 3)
	rand.Read(id)
	w := &keyWorld{r: r, s: s, creds: creds, runID: hex.EncodeToString(id), execs: newExecCounter()}
	if err := w.startCars(ctx); err != nil {
		return rep, err
	}
	defer func() {
		if serr := w.stopCars(); serr != nil && err == nil {
			err = fmt.Errorf("stop the cars: %w", serr)
		}
	}()
	if err := w.waitCars(ctx, "online", 60*time.Second+time.Duration(o.Cars)*10*time.Millisecond, online); err != nil {
		return rep, err
	}
	if err := w.setUpOwners(ctx); err != nil {
		return rep, fmt.Errorf("set up owners: %w", err)
	}
	if err := w.waitCars(ctx, "acknowledged their whitelists", 2*time.Minute, synced); err != nil {
		return rep, err
	}
	r.logf("%d cars online, each with an owner (TOTP enrolled, phone key paired) through %s", o.Cars, s.replicas[victimIndex].name)

	log := newRequestLog()
	trackers := make([]*replyTracker, len(w.owners))
	defer func() {
		for _, t := range trackers {
			if t != nil {
				t.close()
			}
		}
	}()
	for i, p := range w.owners {
		if trackers[i], err = connectTracker(ctx, "tcp://"+s.mqttAddr, p, log); err != nil {
			return rep, err
		}
	}

	// The kill and the restart run beside the load.
	var (
		ft       = failoverTimes{}
		writes   []pendingWrite
		chaosErr error
		done     = make(chan struct{})
	)
	lctx, cancelLoad := context.WithCancel(ctx)
	defer cancelLoad()
	ft.start = time.Now()
	go func() {
		defer close(done)
		fail := func(e error) { chaosErr = e; cancelLoad() }
		if !sleepCtx(lctx, time.Until(ft.start.Add(o.Duration/3))) {
			return
		}
		var err error
		writes, err = makeWrites(lctx, w, o.Writes)
		if err != nil {
			fail(fmt.Errorf("acknowledged writes before the kill: %w", err))
			return
		}
		ft.kill = time.Now()
		if err := s.killReplica(victimIndex); err != nil {
			fail(err)
			return
		}
		r.logf("%s killed (SIGKILL) %.1fs into the load, after %d acknowledged key changes", rep.Victim, time.Since(ft.start).Seconds(), len(writes))
		if !sleepCtx(lctx, time.Until(ft.start.Add(2*o.Duration/3))) {
			return
		}
		ft.restart = time.Now()
		if err := s.startReplica(lctx, s.replicas[victimIndex]); err != nil {
			fail(fmt.Errorf("start %s again: %w", rep.Victim, err))
			return
		}
		ft.back = time.Now()
		r.logf("%s back (ready %.1fs after its start)", rep.Victim, ft.back.Sub(ft.restart).Seconds())
	}()
	n := len(creds)
	actions := defaultActions(cfg)
	made, _, _ := paced(lctx, o.Rate, o.Duration, maxInflight, newLatency(), func(k int) {
		i := k % n
		trackers[w.carOwner[i]].send(lctx, creds[i].VIN, actions[(k/n)%len(actions)])
	})
	<-done
	if chaosErr != nil {
		return rep, chaosErr
	}
	if ctx.Err() != nil {
		return rep, ctx.Err()
	}
	r.logf("%d requests sent over %s; waiting for their terminal replies (expiry + %s at most)", made, o.Duration, failoverGrace)
	_ = pollUntil(ctx, protocol.DefaultCommandLifetimeMs*time.Millisecond+failoverGrace+5*time.Second, 200*time.Millisecond, func() error {
		if open := log.settled(time.Now(), failoverGrace); open > 0 {
			return fmt.Errorf("%d open", open)
		}
		return nil
	})
	sleepCtx(ctx, failoverLinger)

	checks, err := checkWrites(ctx, s, writes)
	if err != nil {
		rep.Problems = append(rep.Problems, err.Error())
	}
	reqs, stray, broken := log.snapshot()
	execs, redelivered := w.execs.snapshot()
	computeFailover(&rep, reqs, execs, redelivered, ft, checks)
	rep.StrayReplies = stray
	if broken > 0 {
		rep.Problems = append(rep.Problems, fmt.Sprintf("%d replies did not decode", broken))
		rep.OK = false
	}
	return rep, nil
}

func (o FailoverOptions) validate() error {
	var errs []error
	if o.Replicas < 1 || o.Replicas > 16 {
		errs = append(errs, fmt.Errorf("--replicas %d: want 1 to 16", o.Replicas))
	}
	switch {
	case o.Store != StoreEtcd && o.Store != StoreBbolt:
		errs = append(errs, fmt.Errorf("--store %q: want etcd or bbolt", o.Store))
	case o.Store == StoreBbolt && o.Replicas != 1:
		errs = append(errs, fmt.Errorf("--store bbolt: one replica only (replicas share their state in etcd)"))
	}
	if o.Cars < 1 || o.Cars > 2000 {
		errs = append(errs, fmt.Errorf("--cars %d: want 1 to 2000", o.Cars))
	}
	if o.Rate <= 0 {
		errs = append(errs, fmt.Errorf("--rate %g: want requests per second above 0", o.Rate))
	}
	if o.Duration < 3*time.Second || o.Duration > maxCommandsWindow {
		errs = append(errs, fmt.Errorf("--duration %s: want 3s to %s (a third before the kill, a third without the replica, a third after)", o.Duration, maxCommandsWindow))
	}
	for _, a := range o.Actions {
		if !protocol.Action(a).Valid() {
			errs = append(errs, fmt.Errorf("--actions: %q is not an action", a))
		}
	}
	return errors.Join(errs...)
}

// pendingWrite is a key change the victim acknowledged: key kid paired with vin.
type pendingWrite struct{ vin, kid string }

// makeWrites has the owners of the first n cars pair a spare phone key with their car, on
// their login session (elevated by the pairing with a code during setup; a new code when the
// step-up lapsed), through the replica they logged in to: the victim.
func makeWrites(ctx context.Context, w *keyWorld, n int) ([]pendingWrite, error) {
	var out []pendingWrite
	for i := range min(n, len(w.creds)) {
		p, vin := w.owners[w.carOwner[i]], w.creds[i].VIN
		key, err := sign.Generate()
		if err != nil {
			return out, err
		}
		k, err := phone.PairKey(ctx, p.sess, key, vin, p.name+"'s spare phone", "")
		if totpRequired(err) {
			code, cerr := p.code()
			if cerr != nil {
				return out, cerr
			}
			k, err = phone.PairKey(ctx, p.sess, key, vin, p.name+"'s spare phone", code)
		}
		if err != nil {
			return out, fmt.Errorf("%s pairs a spare key with %s: %w", p.name, vin, err)
		}
		out = append(out, pendingWrite{vin: vin, kid: k.ID})
	}
	return out, nil
}

// checkWrites asks every running replica for the cars and looks for each acknowledged write.
func checkWrites(ctx context.Context, s *sut, writes []pendingWrite) ([]WriteCheck, error) {
	checks := make([]WriteCheck, len(writes))
	for i, wr := range writes {
		checks[i].What = fmt.Sprintf("key %s of %s", wr.kid, wr.vin)
	}
	var errs []error
	for _, rp := range s.replicas {
		if rp.proc == nil {
			continue
		}
		views, err := api.NewClient(rp.httpURL, s.token).Vehicles(ctx)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: list the cars: %w", rp.name, err))
			continue
		}
		byVIN := make(map[string]api.VehicleView, len(views))
		for _, v := range views {
			byVIN[v.VIN] = v
		}
		for i, wr := range writes {
			if !hasKey(byVIN[wr.vin], wr.kid) {
				checks[i].MissingOn = append(checks[i].MissingOn, rp.name)
			}
		}
	}
	return checks, errors.Join(errs...)
}

func hasKey(v api.VehicleView, kid string) bool {
	if v.Keys == nil {
		return false
	}
	for _, k := range v.Keys.Keys {
		if k.ID == kid {
			return true
		}
	}
	return false
}

// sleepCtx waits d or until ctx ends; it reports whether d passed.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// ParseActions splits a comma-separated --actions value.
func ParseActions(s string) []string {
	var out []string
	for _, a := range strings.Split(s, ",") {
		if a = strings.TrimSpace(a); a != "" {
			out = append(out, a)
		}
	}
	return out
}
