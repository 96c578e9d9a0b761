package bench

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"telematics/pkg/api"
	"telematics/pkg/protocol"
	"telematics/pkg/vehicle"
	"telematics/pkg/vehicle/carstore"
	vehiclefleet "telematics/pkg/vehicle/fleet"
)

// The digital-key scenarios (commands, revoke, local) run real cars: pkg/vehicle/fleet's Run in
// this process, which verify the gateway's grant and the phone's signature against their own
// whitelists, commit each command to their bbolt store and serve the local link from the same
// Garage. Each car gets an owner who does what a person does through the gateway's HTTP API
// (gateway/harness's Person, against a gateway in another process): the admin adds the user and
// assigns the car, the owner logs in, enrolls TOTP and confirms it with a code, and pairs a
// phone key with a code. Setup is not measured; it ends when every car acknowledged the
// whitelist that holds its keys.

// keyWorld is the cars, owners and phones of one digital-key run.
type keyWorld struct {
	r      *runner
	s      *sut
	creds  []protocol.Credentials
	owners []*person // the owners: owners[i] owns creds[i].VIN, or with --owners M cars i, i+M, …
	// carOwner[i] is the index in owners of car creds[i]'s owner.
	carOwner []int
	runID    string // makes user names unique on a gateway that is reused (target mode)

	garage *vehicle.Garage
	store  *carstore.Store
	// execs, when set before startCars, counts what the cars commit (the failover drill).
	execs  *execCounter
	dir    string
	cancel context.CancelFunc
	done   chan struct{}
	stats  vehiclefleet.Stats
	err    error
}

// startCars runs the cars of creds against the system under test's broker, in this process.
func (w *keyWorld) startCars(ctx context.Context) error {
	var err error
	if w.dir, err = os.MkdirTemp("", "vehicle-sim-bench-cars-"); err != nil {
		return err
	}
	if w.store, err = carstore.Open(filepath.Join(w.dir, carstore.File)); err != nil {
		return err
	}
	w.garage = vehicle.NewGarage()
	var store vehicle.CarStore = w.store
	if w.execs != nil {
		w.execs.CarStore = w.store
		store = w.execs
	}
	fctx, cancel := context.WithCancel(context.Background())
	w.cancel, w.done = cancel, make(chan struct{})
	go func() {
		defer close(w.done)
		w.stats, w.err = vehiclefleet.Run(fctx, vehiclefleet.Config{
			BrokerURL: "tcp://" + w.s.mqttAddr, Creds: w.creds, Store: store, Garage: w.garage,
			TelemetryInterval: vehiclefleet.DefaultTelemetryInterval, ConnectRate: 2000,
			MaxReconnectInterval: 2 * time.Second,
		})
	}()
	return nil
}

// stopCars stops the cars (each finishes its command and says offline) and removes their store.
func (w *keyWorld) stopCars() error {
	if w.cancel == nil {
		return nil
	}
	w.cancel()
	<-w.done
	w.cancel = nil
	err := w.store.Close()
	os.RemoveAll(w.dir)
	if w.err != nil && !errors.Is(w.err, context.Canceled) {
		return errors.Join(err, w.err)
	}
	return err
}

// views returns the gateway's view of the run's cars, by VIN (one request for all of them).
func (w *keyWorld) views(ctx context.Context) (map[string]api.VehicleView, error) {
	all, err := w.s.admin().Vehicles(ctx)
	if err != nil {
		return nil, err
	}
	out := make(map[string]api.VehicleView, len(w.creds))
	for _, v := range all {
		out[v.VIN] = v
	}
	return out, nil
}

// waitCars polls the gateway until cond holds for every car of the run, or timeout.
func (w *keyWorld) waitCars(ctx context.Context, what string, timeout time.Duration, cond func(api.VehicleView) bool) error {
	deadline := time.Now().Add(timeout)
	lastLog := time.Now()
	for {
		vs, err := w.views(ctx)
		if err != nil {
			return err
		}
		n := 0
		for _, c := range w.creds {
			if cond(vs[c.VIN]) {
				n++
			}
		}
		if n == len(w.creds) {
			return nil
		}
		if err := w.s.checkAlive(); err != nil {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d of %d cars %s after %s", n, len(w.creds), what, timeout)
		}
		if time.Since(lastLog) > 5*time.Second {
			w.r.logf("%d/%d cars %s", n, len(w.creds), what)
			lastLog = time.Now()
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(w.pollEvery()):
		}
	}
}

// pollEvery is how often waitCars asks: every poll has the gateway encode every car (~1 KB
// each, with its keys), so a large fleet is polled less often (200 ms up to 2,000 cars, then
// 100 µs a car: 1 s at 10,000).
func (w *keyWorld) pollEvery() time.Duration {
	return max(200*time.Millisecond, time.Duration(len(w.creds))*100*time.Microsecond)
}

func online(v api.VehicleView) bool { return v.Twin != nil && v.Twin.Status == protocol.StatusOnline }

func synced(v api.VehicleView) bool {
	return v.Keys != nil && v.Keys.Version > 0 && v.Keys.AckedVersion >= v.Keys.Version
}

// runKeys runs a digital-key scenario on the system under test run has started and
// provisioned: the cars, their owners, then the scenario's phase, which fills res.
func (r *runner) runKeys(ctx context.Context, s *sut, creds []protocol.Credentials, setup time.Time, res *Result) (err error) {
	cfg := r.cfg
	id := make([]byte, 3)
	rand.Read(id)
	w := &keyWorld{r: r, s: s, creds: creds, runID: hex.EncodeToString(id)}
	if err := w.startCars(ctx); err != nil {
		return err
	}
	defer func() {
		if serr := w.stopCars(); serr != nil && err == nil {
			err = fmt.Errorf("stop the cars: %w", serr)
		}
	}()
	if err := w.waitCars(ctx, "online", 60*time.Second+time.Duration(cfg.Cars)*time.Millisecond, online); err != nil {
		return err
	}
	res.Connected = int64(cfg.Cars)
	owners := "their owners"
	if cfg.Owners > 0 {
		owners = fmt.Sprintf("%d owners, round-robin", cfg.Owners)
	}
	r.logf("%d cars online in %.1fs; setting up %s (user, login, TOTP, phone key)", cfg.Cars, time.Since(setup).Seconds(), owners)
	if err := w.setUpOwners(ctx); err != nil {
		return fmt.Errorf("set up owners: %w", err)
	}
	res.Owners = len(w.owners)
	r.logf("owners set up %.1fs after the start of the setup", time.Since(setup).Seconds())

	var phase func(context.Context, *keyWorld, *measure, *Result) error
	switch cfg.Scenario {
	case ScenarioCommands:
		phase = runCommands
	case ScenarioRevoke:
		phase = runRevoke
	case ScenarioLocal:
		phase = runLocal
	default:
		return fmt.Errorf("scenario %q is not a digital-key scenario", cfg.Scenario)
	}
	m := &measure{s: s, setupStart: setup}
	defer m.abort()
	if err := phase(ctx, w, m, res); err != nil {
		return err
	}
	if err := s.checkAlive(); err != nil {
		return err
	}
	end, err := s.sample()
	if err != nil {
		return err
	}
	res.HostLoad[1] = loadAverage()
	var ops int64
	res.OpUnit, ops = "command", res.Executed // executed: commands, local
	if cfg.Scenario == ScenarioRevoke {
		res.OpUnit, ops = "revocation", int64(res.Revoked)
	}
	for i, p := range s.procs {
		pr := ProcResult{Role: p.role, PID: p.pid, RSSKB: end[i].RSSKB, AnonKB: end[i].AnonKB, HWMKB: end[i].HWMKB}
		if len(m.cpu0) == len(s.procs) && len(m.cpu1) == len(s.procs) {
			pr.RSSKBBase = m.cpu0[i].RSSKB
			pr.CPUPct = cpuPercent(m.cpu0[i], m.cpu1[i])
		}
		if len(m.counts) == len(s.procs) {
			pr.setPerOp(m.counts[i], ops)
		}
		if len(m.idle) == len(s.procs) {
			pr.setIdle(m.idle[i])
		}
		res.Processes = append(res.Processes, pr)
	}
	if !m.load0.IsZero() {
		res.LoaderCPUPct = 100 * float64(m.loadCPU1-m.loadCPU0) / float64(m.load1.Sub(m.load0))
	}
	res.LoadProcs = 1
	for _, n := range res.ErrorsByReason {
		res.Errors += n
	}
	r.logf("done: %d errors", res.Errors)
	return nil
}
